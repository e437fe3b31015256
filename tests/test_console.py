"""What a run prints: our lines, a progress bar whose ETA is not thrown off by the first iteration, and the
libraries' own info lines only with --verbose."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import time

from skill1.cli import build_parser


def test_the_eta_counts_from_the_second_iteration():
    """The first iteration holds start-up and the initial evaluation: in the rate it put the ETA out by minutes."""
    from skill1.loop.train import SteadyBar

    out = io.StringIO()
    bar = SteadyBar(total=10, initial=2, file=out, mininterval=0, ascii=True)  # resumed at iteration 2
    time.sleep(0.6)
    bar.update(1)
    first = out.getvalue().split("\r")[-1]
    assert "3/10" in first and "<?" in first  # no ETA yet
    for _ in range(3):
        time.sleep(0.05)
        bar.update(1)
    steady = bar.format_dict
    bar.close()
    remaining = (steady["total"] - steady["n"]) / steady["rate"]
    assert steady["n"] == 6 and remaining < 0.6  # ~0.05 s an iteration, not (0.6 + 0.15) / 4
    assert steady["elapsed"] >= 0.7  # elapsed is still the whole run's


def test_ray_and_wandb_info_lines_are_kept_out_unless_verbose():
    """In a fresh process, as the CLI runs it: importing Ray after setting the level would reset it to INFO."""
    assert build_parser().parse_args(["--verbose", "eval", "--run", "r"]).verbose
    assert not build_parser().parse_args(["eval", "--run", "r"]).verbose
    probe = ("import logging, os; from skill1.cli import quiet_console; quiet_console(); import ray; "
             "print(logging.getLogger('ray._private.worker').getEffectiveLevel(), os.environ['WANDB_SILENT'])")
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SILENT"}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True).stdout
    assert out.split() == [str(logging.WARNING), "true"]
    # Ray's auth notices: "on" (its default) is dropped, "off" (anyone on the network may run code) stays
    probe = ("from skill1.cli import quiet_console; quiet_console(); "
             "from ray._private.authentication import authentication_token_setup as a; "
             "a._warn_token_auth_enabled(); a._warn_token_auth_disabled()")
    err = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True).stderr
    assert "Token authentication is disabled" in err and "Token authentication is enabled" not in err


def test_help_says_what_each_command_does_and_its_defaults(capsys):
    import pytest

    from skill1.cli import main
    from skill1.config import Skill1Config

    defaults = Skill1Config()
    for argv, wanted in ((["--help"], ["skill1 train --config pipelines/configs/quickstart.yaml", "--verbose"]),
                         (["train", "--help"], ["A run writes runs/<name>/"]),
                         (["eval", "--help"], ["Greedy and seeded per episode", f"default {defaults.env.eval_tasks}"]),
                         (["model", "init-tiny", "--help"], [defaults.model.path, str(defaults.model.warm_start_steps), "--force"])):
        with pytest.raises(SystemExit):
            main(argv)
        out = capsys.readouterr().out
        assert all(w in out for w in wanted), (argv, out)
        assert "one function per command" not in out  # the module's notes for developers are not the help
