"""study/driver/tuner.py without a study: what it removes from Tune's storage."""

from study.driver.tuner import remove_orphan_folders


def test_only_folders_of_unknown_trials_are_removed(tmp_path):
    names = ["run_trial_bf303_00000_0_preset=model_1,seed=0_2026-11-24_18-56-24",  # a grid trial: "_" in its id
             "run_trial_3286c70b_2_grey_weight=0.1744_2026-11-25_21-55-44",
             "run_trial_436650dc_3_grey_weight=0.4326_2026-11-25_21-56-03"]  # never recorded in the tables
    for name in names:
        (tmp_path / name / "checkpoint_000000").mkdir(parents=True)
    removed = remove_orphan_folders(str(tmp_path), {"bf303_00000", "3286c70b", "bf303_00001"})
    assert removed == [names[2]] and sorted(p.name for p in tmp_path.iterdir()) == sorted(names[:2])
    assert remove_orphan_folders("s3://bucket/study", set()) == []  # remote storage is left alone

