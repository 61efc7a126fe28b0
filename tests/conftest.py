"""Triton's mode is fixed when it is imported: TRITON_INTERPRET=1 runs kernels on the CPU but
cannot compile for a GPU target, and the other way round. `make test` therefore runs the suite
twice: the `cuda_compile` tests without the interpreter, everything else with it; a test in
the wrong run fails and says so rather than skipping silently.

Hypothesis profiles: `ci` (the default) skips shrinking, because minimising a failing
cascade re-runs sympy, the verifier and the interpreter thousands of times (minutes on two
cores) and every failure already notes the cascade's text form; `dev` shrinks. Choose with
`pytest --hypothesis-profile=dev`."""

import pytest
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


@pytest.fixture(autouse=True)
def _triton_mode(request: pytest.FixtureRequest) -> None:
    wants_compiler = request.node.get_closest_marker("cuda_compile") is not None
    wants_interpreter = request.node.get_closest_marker("triton_interpret") is not None
    if not (wants_compiler or wants_interpreter):
        return
    from attncc.backends.triton.cubin import library_is_interpreted

    if wants_compiler and library_is_interpreted():
        pytest.fail("cuda_compile test run with TRITON_INTERPRET=1: run `pytest -m cuda_compile`")
    if wants_interpreter and not library_is_interpreted():
        pytest.fail("triton_interpret test run without TRITON_INTERPRET=1 (see make test)")
