"""study/tuner.py without a study: what it removes from Tune's storage, and how it reads a lost worker's error."""

from study.tuner import remove_orphan_folders, worker_loss_cause


def test_only_folders_of_unknown_trials_are_removed(tmp_path):
    names = ["run_trial_bf303_00000_0_preset=model_1,seed=0_2026-11-24_18-56-24",  # a grid trial: "_" in its id
             "run_trial_3286c70b_2_grey_weight=0.1744_2026-11-25_21-55-44",
             "run_trial_436650dc_3_grey_weight=0.4326_2026-11-25_21-56-03"]  # never recorded in the tables
    for name in names:
        (tmp_path / name / "checkpoint_000000").mkdir(parents=True)
    removed = remove_orphan_folders(str(tmp_path), {"bf303_00000", "3286c70b", "bf303_00001"})
    assert removed == [names[2]] and sorted(p.name for p in tmp_path.iterdir()) == sorted(names[:2])
    assert remove_orphan_folders("s3://bucket/study", set()) == []  # remote storage is left alone


def test_a_lost_worker_or_node_is_named_from_rays_error_text():
    """Ray's texts for a dead actor (Ray 2.60): a node that died, or a worker process killed while its node lived."""
    assert worker_loss_cause("ray.exceptions.ActorDiedError: The actor died because its node has died.") == "node lost"
    assert worker_loss_cause("The actor died unexpectedly before finishing this task.").startswith("worker killed")
    assert worker_loss_cause("ValueError: bad config") is None and worker_loss_cause(None) is None
