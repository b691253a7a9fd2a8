"""``semiseg suggest``: the multi-network methods added with BCP and AD-MT offer the disagreement score."""

from semiseg.config import load_config


def test_bcp_and_ad_mt_disagree_across_student_and_teachers_unimatch_has_one_net():
    from semiseg.engine.assemble import method_context
    from semiseg.engine.suggest import members
    from semiseg.methods import get_method

    cfg = load_config(None, ["data.source=phantom"])
    ctx = method_context(cfg, {"label_mode": "multiclass", "class_names": ["bg", "a"], "channels": 1})
    assert members(get_method("ad_mt")(ctx, {})) == (["student", "teacher1", "teacher2"], "student")
    assert members(get_method("ad_mt")(ctx, {"predict_with": "teacher2"}))[1] == "teacher2"
    assert members(get_method("bcp")(ctx, {})) == (["student", "teacher"], "student")
    assert members(get_method("unimatch")(ctx, {})) is None
