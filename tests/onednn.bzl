"""py_test twins that run one test file with TensorFlow's oneDNN kernels off and on."""

def py_test_onednn_twins(name, **kwargs):
    """Declares `name` (TF_ENABLE_ONEDNN_OPTS=0) and `name_onednn` (=1).

    TensorFlow turns oneDNN on by default only on CPUs with AVX-512 VNNI/BF16
    or AMX; forcing the setting both ways tests both paths on any x86 machine
    (ntk_tf/onednn.py lists the ops oneDNN gets wrong). Takes py_test's args.
    """
    env = kwargs.pop("env", {})
    main = kwargs.pop("main", name + ".py")
    for suffix, setting in (("", "0"), ("_onednn", "1")):
        twin_env = dict(env)
        twin_env["TF_ENABLE_ONEDNN_OPTS"] = setting
        native.py_test(name = name + suffix, main = main, env = twin_env, **kwargs)
