"""Mutation check: do the tests notice a one-line mistake at the joints between the pieces? (issue 19)

    python bench/mutation_check.py                      # every mutation, a sanity mutation first
    python bench/mutation_check.py --list               # the list: name, file, selection
    python bench/mutation_check.py --only collate_negates_advantages --only kl_sign
    python bench/mutation_check.py --group own          # the algorithm / learner / trainer ones
    python bench/mutation_check.py --timeout 300 --no-baseline

For each mutation (file, an exact snippet of one line, its replacement, the pytest selection that should
catch it) this copies the repository (without .venv, runs, .git, caches) to a temporary directory once,
applies the one change there, runs the selection with the copy first on PYTHONPATH and as the working
directory (skill1 is an editable install: its finder comes after PYTHONPATH, so the copy is what every
process imports, Ray workers included), restores the file, and prints a table:

    mutation | tests run | killed / SURVIVED | seconds

`killed`: the selection failed with the mutation in place (pytest exit status 1, or 2 when the mutant breaks
collection). `SURVIVED`: the selection passed. `no tests` / `error`: the selection ran nothing (exit 5) or
pytest refused it (exit 4: a file or option that does not exist) — the mutation was not checked. `timeout`:
the selection ran past --timeout. With the baseline on (default), each distinct selection first runs on
the unmutated copy; a selection that fails there cannot judge a mutation (`baseline fails`).

A mutation whose snippet is not found exactly once in its file is refused before anything runs (one line
each, exit status 2): the list cannot silently rot as the code changes. Exit status 1 when any mutation
survived (or could not be checked), 0 when all were killed. Not part of CI: a tool to rerun after changing
the tests or the code at a joint. Run it niced on a shared machine; every selection runs with -x.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# never copied: environments, run outputs, VCS and caches; the venvs are linked (tests name their interpreters)
EXCLUDE = {".venv", ".venv-vllm", "runs", ".git", "__pycache__", ".pytest_cache", ".cache", "wandb", ".whl", ".gl"}
LINKED = (".venv", ".venv-vllm")


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str  # relative to the repository root
    original: str  # must occur exactly once in the file
    replacement: str
    tests: tuple[str, ...]  # pytest arguments: paths, node ids, -k expressions
    group: str = "own"  # own: algorithm / learner / trainer / metrics; rollout: worker, sampler, async loop
    why: str = ""


def _m(name, file, original, replacement, tests, group="own", why=""):
    return Mutation(name, file, original, replacement, tuple(tests), group, why)


JOINTS = "tests/test_joints.py"

MUTATIONS: list[Mutation] = [
    # --- the six of issue 19 ------------------------------------------------------------------------------------------
    _m("collate_negates_advantages", "skill1/learner/batching.py",
       "adv.extend([s.advantage] * len(gen))", "adv.extend([-s.advantage] * len(gen))",
       [JOINTS, "-k", "raises_the_positive"], why="issue 19 #1: the learner trains against its credit"),
    _m("compute_credit_negative_lambda_distill", "skill1/settings.py",
       "lambda_distill=algo.lambda_distill,", "lambda_distill=-algo.lambda_distill,",
       [JOINTS, "-k", "lambdas"], why="issue 19 #2"),
    _m("invalid_action_penalty_sign_flipped", "skill1/algo/batch.py",
       "reward=ep.outcome - invalid_action_penalty * ep.num_invalid_actions,",
       "reward=ep.outcome + invalid_action_penalty * ep.num_invalid_actions,",
       [JOINTS, "-k", "invalid_action"], why="issue 19 #3: an invalid action becomes a bonus"),
    _m("invalid_action_penalty_dropped", "skill1/algo/batch.py",
       "reward=ep.outcome - invalid_action_penalty * ep.num_invalid_actions,", "reward=ep.outcome,",
       [JOINTS, "-k", "invalid_action"], why="issue 19 #3, second half"),
    _m("worker_stamps_newest_version", "skill1/rollout/worker.py",
       "ep.min_version = version if ep.min_version is None else min(ep.min_version, version)",
       "ep.min_version = version if ep.min_version is None else max(ep.min_version, version)",
       ["tests/test_rollout_worker.py", "-k", "oldest"], group="rollout",
       why="issue 19 #4: the in-process worker with stub samplers of different versions"),
    _m("worker_retrieves_from_head", "skill1/rollout/worker.py",
       "pinned = head.checkout(version)", "pinned = head",
       ["tests/test_rollout_worker.py", "-k", "pinned"], group="rollout",
       why="issue 19 #5: skills written to the head after the pin are never candidates"),
    _m("sampler_host_acks_without_loading", "skill1/rollout/host.py",
       "self.sampler.load_weights(packet)\n", "self.sampler.version = packet.version\n",
       ["tests/test_sampler.py", "-k", "acknowledges"], group="rollout",
       why="issue 19 #6: tests by the rollout-side change (test_sampler.py / test_e2e.py)"),
    _m("constrained_logprobs_are_the_masked_policys", "skill1/rollout/sampler.py",
       "logps = torch.where(masked, gather_logprobs(logits, tokens, params.temperature or 1.0), logps)",
       "logps = logps",
       ["tests/test_action_grammar.py", "-k", "logprobs"], group="rollout",
       why="constrained acting: the learner recomputes the unmasked policy's log-probs"),
    _m("worker_drops_the_action_constraint", "skill1/rollout/worker.py",
       "[e.request.constraint for e in eps])", "[None for e in eps])",
       ["tests/test_rollout_worker.py", "-k", "constrained"], group="rollout",
       why="constrained acting: the admissible actions reach the sampler"),
    _m("grammar_forgets_the_token_budget", "skill1/rollout/sampler.py",
       "self._grammar.allowed(t, c, tokens_left)", "self._grammar.allowed(t, c)",
       ["tests/test_action_grammar.py", "-k", "random_policy"], group="rollout",
       why="a thought that runs on is closed in time to write the action"),
    # --- credit: advantages.py and what feeds it ----------------------------------------------------------------------
    _m("grpo_baseline_is_group_min", "skill1/algo/advantages.py",
       "centred = x - x.mean()", "centred = x - x.min()",
       ["tests/test_advantages.py"], why="the group mean baseline"),
    _m("grpo_std_biased", "skill1/algo/advantages.py",
       "x.std(ddof=1)", "x.std(ddof=0)",
       [JOINTS, "-k", "invalid_action"], why="verl's unbiased group std (the hand numbers 1, 0, -1)"),
    _m("stage_credit_selection_gets_variation", "skill1/algo/advantages.py",
       "            return self.selection\n", "            return self.distillation\n",
       [JOINTS, "-k", "lambdas"], why="trend and variation swapped at the stage lookup"),
    _m("selection_term_uses_distill_term", "skill1/algo/advantages.py",
       "sel = s.intrinsic_coefficient * s.lambda_rerank * sel_term[i] if s.selection_on else 0.0",
       "sel = s.intrinsic_coefficient * s.lambda_rerank * dis_term[i] if s.selection_on else 0.0",
       ["tests/test_advantages.py"], why="trend vs variation swapped inside assign_credit"),
    _m("variation_sign_flipped", "skill1/algo/advantages.py",
       "return float(outcome - promised)", "return float(promised - outcome)",
       ["tests/test_advantages.py"], why="r_dis = r - u_hat"),
    _m("compute_credit_lambdas_swapped", "skill1/settings.py",
       "lambda_rerank=algo.lambda_rerank, lambda_distill=algo.lambda_distill,",
       "lambda_rerank=algo.lambda_distill, lambda_distill=algo.lambda_rerank,",
       [JOINTS, "-k", "lambdas"], why="config → credit"),
    _m("compute_credit_ignores_u_hat_aggregation", "skill1/settings.py",
       "u_hat_aggregation=cfg.library.u_hat_aggregation,", 'u_hat_aggregation="max",',
       [JOINTS, "-k", "lambdas"], why="config → credit"),
    _m("compute_credit_default_penalty", "skill1/loop/steps.py",
       "[credit_inputs(e, cfg.env.invalid_action_penalty) for e in episodes]",
       "[credit_inputs(e, 0.1) for e in episodes]",
       [JOINTS, "-k", "invalid_action"], why="config → credit: the env's penalty (WebShop 0.5)"),
    _m("samples_carry_act_advantage_everywhere", "skill1/algo/batch.py",
       "advantage=credit.for_stage(seg.stage),", "advantage=credit.utilization,",
       [JOINTS, "-k", "lambdas"], why="credit → samples: each stage's advantage on its tokens"),
    _m("episode_outcome_is_the_win", "skill1/agent/episode.py",
       "outcome = float(step.reward)", "outcome = float(step.won)",
       [JOINTS, "-k", "partial_score"], why="env → episode: WebShop's score is the outcome"),
    _m("episode_success_is_any_reward", "skill1/agent/episode.py",
       "success = bool(step.won)", "success = bool(step.reward)",
       [JOINTS, "-k", "partial_score"], why="env → episode: success is a win, not a partial score"),
    # --- loss and learner ---------------------------------------------------------------------------------------------
    _m("ppo_clip_takes_max", "skill1/algo/losses.py",
       "pg = -is_w * torch.minimum(unclipped, clipped)", "pg = -is_w * torch.maximum(unclipped, clipped)",
       ["tests/test_losses.py"], why="PPO's pessimistic bound"),
    _m("ppo_ratio_inverted", "skill1/algo/losses.py",
       "ratio = torch.exp(logp - prox)", "ratio = torch.exp(prox - logp)",
       [JOINTS, "-k", "raises_the_positive and torch"], why="new vs old log-probs swapped in the ratio"),
    _m("kl_penalty_sign", "skill1/algo/losses.py",
       "per_token = pg + kl_coef * kl", "per_token = pg - kl_coef * kl",
       ["tests/test_losses.py"], why="KL is a penalty"),
    _m("kl_k3_direction", "skill1/algo/losses.py",
       "d = ref_logp - logp", "d = logp - ref_logp",
       ["tests/test_losses.py"], why="k3 estimates KL(policy || reference)"),
    _m("logprob_normaliser_sign", "skill1/algo/losses.py",
       "squeeze(-1) - torch.logsumexp(logits, dim=-1)", "squeeze(-1) + torch.logsumexp(logits, dim=-1)",
       [JOINTS, "-k", "raises_the_positive and torch"], why="learner log-probs vs the sampler's"),
    _m("collate_target_off_by_one", "skill1/learner/batching.py",
       "cols.extend(t - 1 for t in gen)", "cols.extend(t for t in gen)",
       ["tests/test_learner.py", "-k", "collate_positions"], why="the token mask / predicting position"),
    _m("learner_kl_against_itself", "skill1/learner/learner.py",
       "ref_logp = response_logprobs(self.reference, mb, self.temperature)",
       "ref_logp = response_logprobs(self.model, mb, self.temperature)",
       [JOINTS, "-k", "raises_the_positive and torch"], why="the frozen reference, not the moving policy"),
    _m("learner_ignores_proximal_logprobs", "skill1/learner/learner.py",
       "prox = mb.proximal_logprobs.to(self.device) if mb.proximal_logprobs is not None else None",
       "prox = None", ["tests/test_learner.py", "-k", "proximal"], why="decoupled PPO's proximal policy (async)"),
    # --- library, staleness, metrics ----------------------------------------------------------------------------------
    _m("utility_ema_weights_swapped", "skill1/algo/utility.py",
       "utility = (1.0 - alpha) * utility + alpha * float(r)", "utility = alpha * utility + (1.0 - alpha) * float(r)",
       ["tests/test_utility.py"], why="u <- (1 - alpha) u + alpha r"),
    _m("ucb_bonus_sign", "skill1/algo/utility.py",
       "return utilities + bonus + similarity_weight * similarities",
       "return utilities - bonus + similarity_weight * similarities",
       ["tests/test_utility.py"], why="exploration is a bonus"),
    _m("retrieval_ranks_worst_first", "skill1/library/retrieval.py",
       "best = np.argsort(-scores, kind=\"stable\")", "best = np.argsort(scores, kind=\"stable\")",
       ["tests/test_utility.py", "-k", "retrieve"], why="retrieval score sign"),
    _m("library_utility_from_failure", "skill1/loop/steps.py",
       "outcomes.setdefault(ep.chosen_skill_id, []).append(ep.outcome)",
       "outcomes.setdefault(ep.chosen_skill_id, []).append(1.0 - ep.outcome)",
       ["tests/test_library_update.py"], why="episode outcome → the chosen skill's utility"),
    _m("library_tagged_with_previous_iteration", "skill1/loop/steps.py",
       'version = library.tag(f"iter-{iteration}")', 'version = library.tag(f"iter-{iteration - 1}")',
       ["tests/test_library_update.py"], why="the tag rollouts of the next iteration pin"),
    _m("staleness_bound_strict", "skill1/algo/admission.py",
       "fresh = staleness(learner_version, behaviour_version) <= self.max_staleness",
       "fresh = staleness(learner_version, behaviour_version) < self.max_staleness",
       ["tests/test_admission.py"], why="eta is inclusive: eta = 0 still trains on-policy groups"),
    _m("async_group_stamped_newest", "skill1/algo/admission.py",
       "return min(e.policy_version for e in episodes)", "return max(e.policy_version for e in episodes)",
       ["tests/test_admission.py", "-k", "behaviour"], group="rollout",
       why="a group is as stale as its oldest episode"),
    _m("wandb_gets_no_metrics", "skill1/metrics.py",
       'self.run.log({**metrics, "iteration": step,', 'self.run.log({"iteration": step,',
       [JOINTS, "-k", "wandb"], why="metrics → wandb's own history"),
    _m("wandb_charts_against_its_own_step", "skill1/metrics.py",
       'self.run.define_metric("*", step_metric="iteration")', 'self.run.define_metric("*")',
       [JOINTS, "-k", "wandb"], why="a resumed run continues the same curves"),
    # --- the GPU paths of issue 17, caught on CPU ---------------------------------------------------------------------
    _m("nccl_gets_int16", "skill1/weights/wire.py",
       'return _VIEW_AS.get(dtype, dtype) if backend == "gloo" else dtype', "return _VIEW_AS.get(dtype, dtype)",
       ["tests/test_weight_wire.py", "-k", "int16"], group="gpu", why="NCCL has no int16: the first sync raises"),
    _m("zero3_layout_reads_placeholders", "skill1/weights/wire.py",
       'return tuple(getattr(p, "ds_shape", p.shape))', "return tuple(p.shape)",
       ["tests/test_zero3.py"], group="gpu", why="samplers would allocate 0-element buffers"),
    _m("every_rank_broadcasts", "skill1/learner/weight_source.py",
       "mine = self.rank == 0 or every_rank", "mine = True",
       ["tests/test_zero3.py"], group="gpu", why="ranks 1.. have no weights channel"),
    _m("ranks_run_their_own_micro_batch_count", "skill1/learner/learner.py",
       "n_micro = max(self._all_ranks_max(len(micro)), 1) if self.world > 1 else len(micro)",
       "n_micro = len(micro)",
       ["tests/test_zero3.py"], group="gpu", why="ZeRO-3's gathers hang on the rank with more passes"),
    _m("vllm_loads_in_one_rpc", "skill1/rollout/vllm.py",
       "step, self.load_rpcs = max(1, int(self.load_bucket_bytes)), 0", "step, self.load_rpcs = 2**62, 0",
       ["tests/test_vllm_sampler.py", "-k", "greedy_matches"], group="gpu",
       why="msgpack refuses a 7B model's 15.2 GB in one message"),
    _m("ipc_handle_of_rank_0_for_all", "skill1/weights/wire.py",
       "out.append(learner_keys.index(key))", "out.append(0)",
       ["tests/test_weight_wire.py", "-k", "colocated_sampler"], group="gpu",
       why="a sampler would map memory on another GPU"),
]

# applied first: the package no longer imports, so any selection must fail; if it passes, the tests did not import
# the copy (an editable install or a stale path would make every other result meaningless)
SANITY = _m("sanity_copy_is_imported", "skill1/__init__.py",
            '__version__ = "0.1.0"', 'raise ImportError("mutation_check: the mutated copy is imported")',
            ["tests/test_advantages.py", "-k", "by_hand"], group="sanity")


def check_snippets(mutations: list[Mutation], root: str) -> list[str]:
    """One line per mutation whose snippet is not in its file exactly once."""
    problems = []
    for m in mutations:
        path = os.path.join(root, m.file)
        if not os.path.isfile(path):
            problems.append(f"refused {m.name}: {m.file} does not exist")
            continue
        with open(path, encoding="utf-8") as f:
            n = f.read().count(m.original)
        if n != 1:
            problems.append(f"refused {m.name}: {m.original.strip()!r} occurs {n} times in {m.file} (must be exactly "
                            f"once: update the mutation list)")
        elif "\n" in m.original.rstrip("\n"):
            problems.append(f"refused {m.name}: the snippet spans several lines (one-line mutations only)")
    return problems


def copy_repo(dest: str) -> str:
    def ignore(directory, names):
        return {n for n in names if n in EXCLUDE or n.endswith(".egg-info") or n.endswith(".pyc")}

    shutil.copytree(ROOT, dest, ignore=ignore, symlinks=True)
    for name in LINKED:
        if os.path.exists(os.path.join(ROOT, name)):
            os.symlink(os.path.join(ROOT, name), os.path.join(dest, name))
    return dest


def child_env(copy: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = copy + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    # no .pyc in the copy: a mutant and its restored original can share a size and an mtime second
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("WANDB_SILENT", "true")
    return env


def imported_from(copy: str) -> str:
    out = subprocess.run([sys.executable, "-c", "import skill1, os; print(os.path.dirname(skill1.__file__))"],
                         cwd=copy, env=child_env(copy), capture_output=True, text=True, timeout=120)
    return out.stdout.strip()


COUNT = re.compile(r"(\d+) (passed|failed|errors?|skipped|deselected|xfailed|xpassed)")


def run_selection(copy: str, tests: tuple[str, ...], timeout: float) -> tuple[str, int, float, str]:
    """(status, tests run, seconds, last lines of output) of one selection on the copy as it is now."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-o", "addopts=", *tests]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=copy, env=child_env(copy), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", 0, time.perf_counter() - t0, ""
    seconds = time.perf_counter() - t0
    out = proc.stdout + proc.stderr
    counts: dict[str, int] = {}
    for n, kind in COUNT.findall(out.strip().splitlines()[-1] if out.strip() else ""):
        counts[kind.rstrip("s") if kind.startswith("error") else kind] = int(n)
    ran = counts.get("passed", 0) + counts.get("failed", 0) + counts.get("error", 0)
    status = {0: "passed", 1: "failed", 2: "failed", 5: "no tests"}.get(proc.returncode, "error")
    if status == "passed" and ran == 0:
        status = "no tests"
    return status, ran, seconds, "\n".join(out.strip().splitlines()[-15:])


def apply(copy: str, m: Mutation) -> str:
    path = os.path.join(copy, m.file)
    with open(path, encoding="utf-8") as f:
        original = f.read()
    if original.count(m.original) != 1:
        raise RuntimeError(f"{m.name}: the copy's {m.file} no longer holds the snippet exactly once")
    with open(path, "w", encoding="utf-8") as f:
        f.write(original.replace(m.original, m.replacement))
    return original


def restore(copy: str, m: Mutation, original: str) -> None:
    with open(os.path.join(copy, m.file), "w", encoding="utf-8") as f:
        f.write(original)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", action="append", default=[], metavar="NAME", help="run this mutation (repeatable)")
    p.add_argument("--group", choices=["own", "rollout", "gpu", "all"], default="all",
                   help="which mutations (default all)")
    p.add_argument("--list", action="store_true", help="print the mutations and their selections, run nothing")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per selection run (default 600)")
    p.add_argument("--no-baseline", action="store_true", help="skip running each selection unmutated first")
    p.add_argument("--no-sanity", action="store_true", help="skip the check that the copy is what is imported")
    p.add_argument("--verbose", action="store_true", help="print pytest's last lines for every run")
    args = p.parse_args(argv)

    names = {m.name for m in MUTATIONS}
    unknown = [n for n in args.only if n not in names]
    if unknown:
        print(f"unknown mutation(s): {', '.join(unknown)} (see --list)")
        return 2
    chosen = [m for m in MUTATIONS if (not args.only or m.name in args.only)
              and (args.only or args.group == "all" or m.group == args.group)]
    problems = check_snippets(chosen + ([] if args.no_sanity else [SANITY]), ROOT)
    if args.list:
        for m in chosen:
            print(f"{m.name:42} {m.group:8} {m.file:30} {' '.join(m.tests)}")
        for line in problems:
            print(line)
        return 2 if problems else 0
    if problems:
        for line in problems:
            print(line)
        return 2

    with tempfile.TemporaryDirectory(prefix="skill1-mutants-") as tmp:
        copy = copy_repo(os.path.join(tmp, "repo"))
        where = imported_from(copy)
        if os.path.realpath(where) != os.path.realpath(os.path.join(copy, "skill1")):
            print(f"refused: the copy imports skill1 from {where or '(nowhere)'}, not {copy}/skill1")
            return 2
        print(f"copy: {copy} (skill1 imported from the copy)")
        if not args.no_sanity:
            original = apply(copy, SANITY)
            try:
                status, _, secs, tail = run_selection(copy, SANITY.tests, args.timeout)
            finally:
                restore(copy, SANITY, original)
            if status != "failed":
                print(f"refused: the sanity mutation (skill1 does not import) left {' '.join(SANITY.tests)} {status}: "
                      f"the tests are not running the copy\n{tail}")
                return 2
            print(f"sanity: a copy that cannot import skill1 fails its tests ({secs:.0f}s)")
        baseline: dict[tuple[str, ...], str] = {}
        if not args.no_baseline:
            for tests in dict.fromkeys(m.tests for m in chosen):
                status, ran, secs, tail = run_selection(copy, tests, args.timeout)
                baseline[tests] = status
                print(f"baseline {' '.join(tests)}: {status}, {ran} run, {secs:.0f}s")
                if status != "passed" or args.verbose:
                    print(tail)
        rows, t_all = [], time.perf_counter()
        for m in chosen:
            if baseline.get(m.tests, "passed") != "passed":
                rows.append((m, "baseline fails", 0, 0.0))
                continue
            original = apply(copy, m)
            try:
                status, ran, secs, tail = run_selection(copy, m.tests, args.timeout)
            finally:
                restore(copy, m, original)
            verdict = {"failed": "killed", "passed": "SURVIVED"}.get(status, status)
            rows.append((m, verdict, ran, secs))
            print(f"  {m.name}: {verdict} ({ran} run, {secs:.0f}s)", flush=True)
            if args.verbose or verdict not in ("killed", "SURVIVED"):
                print(tail)

    width = max(len(m.name) for m, *_ in rows) if rows else 10
    print()
    print(f"{'mutation':{width}}  {'group':8}  {'tests run':>9}  {'result':14}  {'seconds':>7}  selection")
    for m, verdict, ran, secs in rows:
        print(f"{m.name:{width}}  {m.group:8}  {ran:>9}  {verdict:14}  {secs:7.1f}  {' '.join(m.tests)}")
    killed = sum(v == "killed" for _, v, *_ in rows)
    print(f"\n{killed} of {len(rows)} killed in {time.perf_counter() - t_all:.0f}s; not killed: "
          f"{', '.join(m.name for m, v, *_ in rows if v != 'killed') or 'none'}")
    return 0 if killed == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
