"""deploy/: the cluster definitions load and run a study command line this version accepts."""

import shlex
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]  # the checkout the commands run from



def _study_command(entrypoint: str):
    """The flags of a `python study/run.py ...` entrypoint, parsed and checked as run.py checks them."""
    from study.run import parse_args
    from study.spec.study_file import load_spec

    words = shlex.split(entrypoint)
    assert words[:2] == ["python", "study/run.py"], entrypoint
    args = parse_args(words[2:])
    load_spec(args.space)  # the study file it names exists and validates
    return args


def test_the_rayjob_runs_a_valid_study_on_object_storage():
    job = yaml.safe_load((REPO / "deploy" / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    args = _study_command(job["spec"]["entrypoint"])
    assert args.storage_path.startswith("s3://")  # nodes share no disk: the study lives in the store
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]["AWS_ENDPOINT_URL"].startswith("http")
    # the cluster's Ray satisfies what the project requires (pyproject.toml), not whatever pip installed here today
    import tomllib

    from packaging.requirements import Requirement

    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    ray_requirement = next(Requirement(line) for line in declared if Requirement(line).name == "ray")
    assert ray_requirement.specifier.contains(cluster["rayVersion"]), (cluster["rayVersion"], str(ray_requirement))
    images = {container["image"] for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
              for container in group["template"]["spec"]["containers"]}
    assert images == {"cvae-study:latest"}  # built from rayproject/ray:<rayVersion> (the file says how)
    assert f"rayproject/ray:{cluster['rayVersion']}" in (REPO / "deploy" / "rayjob.yaml").read_text()


def test_the_cluster_launcher_installs_the_project_and_starts_a_head_without_trials():
    config = yaml.safe_load((REPO / "deploy" / "cluster.yaml").read_text())
    assert config["available_node_types"][config["head_node_type"]]["resources"] == {"CPU": 0}
    assert any("pip install" in command and "cvae-study[cluster]" in command for command in config["setup_commands"])
    assert any("--head" in command for command in config["head_start_ray_commands"])
    assert config["file_mounts"] == {"~/cvae-study": "."}
    submit = next(line for line in (REPO / "deploy" / "cluster.yaml").read_text().splitlines()
                  if "python study/run.py" in line)
    _study_command(submit.lstrip("# ").strip())
