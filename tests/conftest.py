"""Hypothesis profiles: `ci` (the default) skips shrinking, because minimising a failing
cascade re-runs sympy, the verifier and the interpreter thousands of times (minutes on two
cores) and every failure already notes the cascade's text form; `dev` shrinks. Choose with
`pytest --hypothesis-profile=dev`."""

from hypothesis import HealthCheck, Phase, settings

settings.register_profile(
    "ci",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    report_multiple_bugs=False,
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
)
settings.register_profile("dev", settings.get_profile("ci"), phases=tuple(Phase))
settings.load_profile("ci")
