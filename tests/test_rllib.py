"""Skill1 as an RLlib Algorithm: the builder over our config tree, train / save / restore, and a Ray Tune search."""

from __future__ import annotations

from pathlib import Path

import pytest

from skill1.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "pipelines/configs/quickstart.yaml"


def _config(model_dir: str, out: Path, name: str, *extra: str):
    from skill1.rllib import Skill1Config

    return Skill1Config.from_yaml(QUICKSTART, [
        f"output_dir={out}", f"name={name}", f"model.path={model_dir}", "rollout.backend=scripted",
        "learner.backend=torch", "algorithm.iterations=10", "algorithm.tasks_per_iteration=2",
        "algorithm.group_size=2", "env.max_steps=3", "env.eval_tasks=4", "logging.wandb_mode=disabled",
        "logging.progress=false", "rollout.max_new_tokens_act=32", "rollout.max_new_tokens_distill=32",
        "rollout.constrain_actions=false", *extra])


def test_the_builder_writes_our_keys_and_round_trips_through_yaml(tmp_path):
    from skill1.rllib import Skill1Config

    cfg = (Skill1Config.from_yaml(QUICKSTART)
           .environment(env="webshop", env_config={"max_steps": 12})
           .env_runners(num_env_runners=3, num_samplers=2)
           .learners(num_learners=2, num_gpus_per_learner=0)
           .training(lr=3e-4, num_epochs=2, algorithm={"preset": "grpo", "group_size": 4})
           .evaluation(evaluation_interval=5)
           .skill_library(top_k=5)
           .overrides("rollout.temperature=0.7", "env.eval_tasks=16"))
    t = cfg.typed()
    assert (t.env.name, t.env.max_steps, t.env.num_pools, t.rollout.num_samplers) == ("webshop", 12, 3, 2)
    assert (t.learner.num_ranks, t.learner.lr, t.learner.ppo_epochs) == (2, 3e-4, 2)
    assert (t.algorithm.preset, t.algorithm.group_size, t.env.eval_tasks, t.library.top_k) == ("grpo", 4, 16, 5)
    assert t.rollout.temperature == 0.7 and t.rollout.mode == "async"  # the YAML's own values stay
    assert cfg.evaluation_interval == 5 and cfg.lr == 3e-4  # RLlib's own fields too
    cfg.to_yaml(tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml", []) == t  # YAML → Skill1Config → YAML: equal
    assert Skill1Config.from_yaml(tmp_path / "c.yaml").typed() == t
    # the dict Tune hands a trial builds the same config
    again = Skill1Config().update_from_dict(cfg.to_dict())
    assert again.typed() == t
    # the last value set wins, whichever way it was set
    assert cfg.overrides("learner.lr=1e-5").typed().learner.lr == 1e-5
    assert cfg.training(lr=2e-5).typed().learner.lr == 2e-5


def test_a_search_over_an_rllib_field_is_one_dimension_of_the_grid():
    """`training(lr=grid)` is both RLlib's `lr` and our `learner.lr`: held twice, Tune crossed the two grids
    (4 trials, half of them training with an lr other than the one reported)."""
    from ray import tune
    from ray.tune.search.variant_generator import generate_variants

    from skill1.rllib import Skill1Config

    space = Skill1Config.from_yaml(QUICKSTART).training(lr=tune.grid_search([1e-3, 1e-4])).env_runners(
        num_env_runners=tune.grid_search([1, 2])).to_dict()
    trials = [Skill1Config().update_from_dict(resolved) for _, resolved in generate_variants(space)]
    assert len(trials) == 4
    assert sorted((c.typed().learner.lr, c.typed().env.num_pools) for c in trials) == [
        (1e-4, 1), (1e-4, 2), (1e-3, 1), (1e-3, 2)]
    assert all(c.typed().learner.lr == c.lr for c in trials)


def test_a_bad_value_is_one_line_naming_the_key():
    from skill1.rllib import Skill1Config

    with pytest.raises(ConfigError, match=r"^learner\.lr: must be") as e:
        Skill1Config.from_yaml(QUICKSTART).training(lr=-1.0).validate()
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"env\.name"):
        Skill1Config().environment(env="atari").build_algo()


def _our_actors(name: str) -> list[str]:
    import ray

    return [a for a in ray.util.list_named_actors() if a.startswith(f"{name}:")]


@pytest.mark.slow
def test_build_train_save_stop_restore_continues_where_it_left_off(small_model_dir, tmp_path):
    import ray

    from skill1.rllib import Skill1

    algo = _config(small_model_dir, tmp_path, "rl").evaluation(evaluation_interval=2).build_algo()
    try:
        assert not _our_actors("rl")  # building starts nothing
        r1, r2 = algo.train(), algo.train()
        assert (r1["training_iteration"], r2["training_iteration"]) == (1, 2)
        for key in ("episode_return_mean", "num_episodes"):
            assert key in r2["env_runners"]
        assert r2["env_runners"]["num_episodes"] == 4.0 and "kl" in r2["learners"]
        assert r2["skill1"]["library/version"] > 0 and "training_iteration" in r2["timers"]
        assert "eval/success" in r2["evaluation"] and "evaluation" not in r1  # evaluation_interval=2
        path = algo.save_to_path(str(tmp_path / "ckpt"))
        digest = ray.get(algo.ctx.fleet.learner.weights_digest.remote())
        tags = algo.ctx.library.tags()
        assert "iter-2" in tags
    finally:
        algo.stop()
    assert not _our_actors("rl") and not [p for p in ray.util.placement_group_table().values()
                                          if p["state"] != "REMOVED" and p["name"].startswith("rl:")]
    again = Skill1.from_checkpoint(path)
    try:
        again._run()  # the fleet starts on first use: the learner and every sampler hold the saved weights
        learner, samplers = again.ctx.fleet.weights_digests()
        assert learner == digest and all(d in (None, digest) for d in samplers)
        r3 = again.train()
        assert r3["training_iteration"] == 3
        assert again.ctx.start_iteration == 2 and again.ctx.library.tags()["iter-2"] == tags["iter-2"]
        assert sorted(t for t in again.ctx.library.tags() if t.startswith("iter-")) == ["iter-1", "iter-2", "iter-3"]
    finally:
        again.stop()
    assert not _our_actors("rl")


def test_a_trial_asks_for_one_bundle_per_actor_and_places_each_by_index():
    """Left to Ray inside the trial's group, the 0.25-CPU actors took parts of the learner's bundle and the
    learner found no bundle with room: the trial hung."""
    from skill1.rllib import Skill1, Skill1Config
    from skill1.runtime import hosted_bundles

    cfg = Skill1Config.from_yaml(QUICKSTART).env_runners(num_env_runners=2, num_samplers=2).learners(
        num_learners=2, num_cpus_per_learner=1)
    request = Skill1.default_resource_request(cfg)
    bundles, at = hosted_bundles(cfg.typed())
    assert request.bundles == bundles and len(bundles) == 1 + 1 + 2 + 2 + 2  # host, worker, ranks, samplers, pools
    t = cfg.typed()
    assert [bundles[i]["CPU"] for i in at.learners] == [1, 1]
    assert [bundles[i]["CPU"] for i in at.samplers] == [t.rollout.num_cpus_per_sampler] * 2
    assert [bundles[i]["CPU"] for i in at.pools] == [t.env.num_cpus_per_pool] * 2
    assert sorted([0, at.worker, *at.learners, *at.samplers, *at.pools]) == list(range(len(bundles)))
