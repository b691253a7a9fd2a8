"""The report module has no import side effects: figures get their own Agg canvas where they are drawn."""

import subprocess
import sys


def test_importing_the_report_selects_no_matplotlib_backend():
    code = "import sys, semiseg.eval.report; assert 'matplotlib.pyplot' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
