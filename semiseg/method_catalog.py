"""Names and one-line summaries of the built-in methods, readable without importing torch.

``semiseg methods`` and ``semiseg --help`` answer from this table in a fraction of a second; importing the
method classes themselves pulls in torch and MONAI (seconds). ``tests/methods/test_catalog.py`` checks the
table against the registered classes and prints the corrected table when a method is added or renamed.
"""

from __future__ import annotations

# name → (module that registers it, its ``summary``)
BUILTIN_METHODS: dict[str, tuple[str, str]] = {
    'ad_mt': ('semiseg.methods.ad_mt',
        'Alternate diverse mean teachers: two EMA teachers take turns; entropy-fused, conflict-resolved labels.'),
    'bcp': ('semiseg.methods.bcp',
        'Bidirectional copy-paste: labelled and unlabelled images pasted into each other, mean-teacher labels.'),
    'cct': ('semiseg.methods.cct',
        'Cross-consistency: auxiliary decoders on perturbed encoder features match the main decoder.'),
    'cmt': ('semiseg.methods.cmt',
        'Collaborative mean teacher: two students co-train (CPS) under an EMA teacher of their average.'),
    'cps': ('semiseg.methods.cps',
        'Cross pseudo supervision: two differently initialised nets teach each other with hard labels.'),
    'cutmix': ('semiseg.methods.cutmix',
        'Mean teacher whose student sees box-mixed unlabelled pairs and the same mix of teacher outputs.'),
    'dual_uncertainty': ('semiseg.methods.dual_uncertainty',
        'Self-training with sample-level (snapshot) and pixel-level (two-decoder KL) uncertainty.'),
    'ensemble': ('semiseg.methods.ensemble',
        'Deep ensemble of M supervised networks; averaged probabilities, members as uncertainty samples.'),
    'fixmatch': ('semiseg.methods.fixmatch',
        'FixMatch for segmentation: confident weak-view pseudo labels train a RandAugment + CutOut view.'),
    'fixmatch_mix': ('semiseg.methods.fixmatch_mix',
        'FixMatch whose strong views are CutMix-ed in pairs, pseudo labels and masks mixed alike.'),
    'mean_teacher': ('semiseg.methods.mean_teacher',
        'EMA teacher on noisy unlabelled images; MSE consistency of probabilities, sigmoid ramp.'),
    'multiscale_supervised': ('semiseg.methods.must',
        "Labelled data only, supervised at every decoder scale and the bottleneck (MuST's Eq. 4 baseline)."),
    'must': ('semiseg.methods.must',
        'Multi-scale consistency: every decoder layer and the bottleneck, fed perturbed features, '
        'match their clean output.'),
    'rpg': ('semiseg.methods.rpg',
        'Reference-guided pseudo labels: nearest labelled pixel in feature space, entropy-weighted CE.'),
    'rpg_plus': ('semiseg.methods.rpg_plus',
        'RPG + FixMatch on RandAugment/CutOut views of the unlabelled images (Seibold et al. 2022, Eq. 11).'),
    'segpl': ('semiseg.methods.segpl',
        'Pseudo-labelling as EM with a fixed threshold (Xu et al. 2022, Eqs. 1-3).'),
    'segpl_vi': ('semiseg.methods.segpl',
        'SegPL with a threshold learnt by variational inference (Xu et al. 2022, Eqs. 4-8).'),
    'self_training': ('semiseg.methods.self_training',
        'Offline self-training baseline: supervised stage, then rounds of pseudo labels from a frozen snapshot.'),
    'supervised': ('semiseg.methods.supervised',
        'Labelled data only (Dice + CE by default); the lower bound every method must beat.'),
    'ua_mt': ('semiseg.methods.ua_mt',
        'Uncertainty-aware Mean Teacher: consistency masked by the entropy of T noisy teacher passes.'),
    'ucmt': ('semiseg.methods.ucmt',
        'CMT + UMIX: a second update per step on images whose uncertain regions got certain ones.'),
    'unimatch': ('semiseg.methods.unimatch',
        'UniMatch: two CutMix-ed strong views and a feature-dropout stream learn the weak view\'s labels.'),
    'urpc': ('semiseg.methods.urpc',
        'Uncertainty-rectified pyramid consistency: decoder scales agree with their mean, weighted by exp(-KL).'),
}
