"""The README's commands and CI agree."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text().splitlines()
    block = readme[readme.index("```bash") + 1 : readme.index("```", readme.index("```bash") + 1)]
    install_and_run, test_command = block[0], block[1]
    assert "rmtllmf" in install_and_run
    ci_lines = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines() if ln.strip()]
    assert ci_lines[-1] == test_command


def test_readme_python_example_runs(capsys):
    """The README's uplink example runs, and what it computes is right: on the ``snr`` link each
    user's error has variance ``mu_q E[tau_q^2] / S_ref`` (closed form), the BERs are
    probabilities, and it prints the MSEs it computed."""
    import re

    import numpy as np
    import pytest

    from rmtllmf.channel import PAPER_SIGNAL_POWER

    readme = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.S)
    assert code is not None
    ns: dict[str, object] = {}
    exec(compile(code.group(1), "README.md", "exec"), ns)
    mu, sent, noisy = ns["mu"], ns["task_vectors"], ns["noisy"]
    assert mu.shape == (8,) and np.all((mu > 0) & (mu < 1))
    for q, (x, y) in enumerate(zip(sent, noisy, strict=True)):
        expected = mu[q] * np.mean(x.astype(np.float64) ** 2) / PAPER_SIGNAL_POWER
        assert np.mean((y - x).astype(np.float64) ** 2) == pytest.approx(expected, rel=0.1)
    assert all(0.0 <= s.ber < 0.5 for s in ns["digital"].stats)
    assert str(mu.round(4)) in capsys.readouterr().out
