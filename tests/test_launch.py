"""launch/: the cluster configs, the job script and the walkthrough, checked offline.

- every YAML under launch/ parses;
- the cluster-launcher configs (aws.yaml, gcp.yaml) pass Ray's own config schema
  (``ray/autoscaler/ray-schema.json``) after Ray's own default-filling, as ``ray up`` does before
  it touches a cloud; a misspelt key is rejected;
- every ``moa-tune ...`` command in launch/ (YAML strings, the job script, README code blocks)
  parses against the real click command tree of ``moa_tune.cli.app``; options of the job script
  used anywhere in launch/ exist in the script; the job script run with a stub ``moa-tune``
  issues only commands the CLI accepts;
- the KubeRay manifests: kinds, ``ray.io/v1``, the RayJob entrypoint, autoscaling bounds, token
  auth, and the dashboard host (0.0.0.0 only with a comment saying it is behind the cluster
  network and a ClusterIP service);
- the GPU sweep file (the RayJob's ConfigMap and the README's copy) passes moa-tune's sweep checks.

No Ray cluster is started and nothing reaches the network.
"""
from __future__ import annotations

import copy
import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import typer
import yaml

try:  # typer >= 0.2x vendors its own click; older typer uses click itself
    from typer._click.core import Context as ClickContext
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover
    from click import ClickException, Context as ClickContext

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
LAUNCHER_CONFIGS = [LAUNCH / "aws.yaml", LAUNCH / "gcp.yaml"]
KUBERAY = LAUNCH / "kuberay"
SCRIPT = LAUNCH / "submit_sweep.sh"
README = LAUNCH / "README.md"
SHELL_LANGS = {"", "bash", "sh", "shell", "console"}


# --------------------------------------------------------------------------------------------
# 1. YAML


def _yaml_files() -> list[Path]:
    return sorted(LAUNCH.rglob("*.yaml")) + sorted(LAUNCH.rglob("*.yml"))


def _load_all(path: Path) -> list:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def test_launch_files_exist() -> None:
    for path in (*LAUNCHER_CONFIGS, KUBERAY / "raycluster.yaml", KUBERAY / "rayjob.yaml", SCRIPT, README):
        assert path.is_file(), path
    assert os.access(SCRIPT, os.R_OK)


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(LAUNCH)))
def test_yaml_parses(path: Path) -> None:
    docs = _load_all(path)
    assert docs, f"{path}: no YAML document"
    assert all(isinstance(doc, dict) for doc in docs), f"{path}: every document should be a mapping"


# --------------------------------------------------------------------------------------------
# 2. Ray's cluster-launcher schema


def _validate_launcher_config(raw: dict) -> dict:
    """What `ray up` does before any cloud call: fill Ray's defaults, then check Ray's schema.

    ``prepare_config`` merges the provider's defaults.yaml, the setup commands and the per-type
    worker bounds; ``validate_config`` runs jsonschema with ray/autoscaler/ray-schema.json
    (unknown keys are errors: the schema says additionalProperties: false) and checks that the
    min_workers of all types fit in max_workers. Both are Ray's private API (util.py); neither
    needs credentials. Provider-specific node_config keys are not checked by Ray.
    """
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(raw))
    validate_config(prepared)
    return prepared


def test_ray_schema_ships_with_ray() -> None:
    import jsonschema  # noqa: F401  (ray[default] requires it)
    import ray.autoscaler

    assert (Path(ray.autoscaler.__file__).parent / "ray-schema.json").is_file()


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_launcher_config_passes_ray_schema(path: Path) -> None:
    raw = yaml.safe_load(path.read_text())
    prepared = _validate_launcher_config(raw)
    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    workers = {name: t for name, t in types.items() if name != prepared["head_node_type"]}
    # a CPU head that takes no trials, GPU workers with autoscaling bounds
    assert head["resources"].get("GPU", 0) == 0 and head["resources"].get("CPU") == 0
    gpu_types = {name: t for name, t in workers.items() if t["resources"].get("GPU", 0) >= 1}
    assert gpu_types, f"{path.name}: no GPU worker type"
    for name, node_type in gpu_types.items():
        assert 1 <= node_type["min_workers"] < node_type["max_workers"] <= prepared["max_workers"], name
    # token auth on, dashboard on loopback
    starts = " ".join(prepared["head_start_ray_commands"] + prepared["worker_start_ray_commands"])
    assert starts.count("RAY_AUTH_MODE=token") == 2
    head_start = " ".join(prepared["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in head_start
    assert prepared["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
    # torch before moa-tune on every node, a CUDA build on the GPU workers (PyPI's default)
    for commands in (prepared["head_setup_commands"], prepared["worker_setup_commands"]):
        torch_at = next(i for i, c in enumerate(commands) if "install" in c and "torch" in c)
        moa_at = next(i for i, c in enumerate(commands) if "install -e ~/moa-tune" in c)
        assert torch_at < moa_at, commands
    assert not any("whl/cpu" in c for c in prepared["worker_setup_commands"])
    assert any("whl/cpu" in c for c in prepared["head_setup_commands"])


@pytest.mark.parametrize("mutation", [
    "bogus_top_level_key", "misspelt_top_level_key", "misspelt_node_type_key", "misspelt_docker_key",
    "wrong_type", "min_over_max",
])
@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_schema_check_rejects_a_broken_config(path: Path, mutation: str) -> None:
    raw = yaml.safe_load(path.read_text())
    worker = next(name for name in raw["available_node_types"] if name != raw["head_node_type"])
    if mutation == "bogus_top_level_key":
        raw["no_such_key"] = 1
    elif mutation == "misspelt_top_level_key":
        raw["idle_timeout_minute"] = raw.pop("idle_timeout_minutes")
    elif mutation == "misspelt_node_type_key":
        raw["available_node_types"][worker]["max_worker"] = raw["available_node_types"][worker].pop("max_workers")
    elif mutation == "misspelt_docker_key":
        raw["docker"]["worker_imag"] = raw["docker"]["worker_image"]
    elif mutation == "wrong_type":
        raw["max_workers"] = "four"
    elif mutation == "min_over_max":
        raw["available_node_types"][worker]["min_workers"] = raw["max_workers"] + 1
    with pytest.raises(Exception) as info:
        _validate_launcher_config(raw)
    assert type(info.value).__name__ in ("ValidationError", "ValueError"), info.value


# --------------------------------------------------------------------------------------------
# 3. moa-tune command lines against the real CLI


class CommandError(Exception):
    pass


def _root_command():
    from moa_tune.cli import app

    return typer.main.get_command(app)


def _is_group(command) -> bool:
    return hasattr(command, "get_command") and hasattr(command, "list_commands")


def _resolve(argv: list[str]):
    """(leaf command, its name path, its remaining args) for ``moa-tune ARGV``."""
    command = _root_command()
    path = ["moa-tune"]
    rest = list(argv)
    while _is_group(command):
        if not rest or rest[0].startswith("-"):
            raise CommandError(f"{' '.join(path)}: no subcommand in {argv}")
        name = rest.pop(0)
        sub = command.get_command(ClickContext(command), name)
        if sub is None:
            raise CommandError(f"{' '.join(path)}: no subcommand '{name}' in {argv}")
        command, path = sub, path + [name]
    return command, path, rest


def check_command(argv: list[str]) -> None:
    """Parse ``moa-tune ARGV`` with the real click command; raises on an unknown command/option."""
    command, path, rest = _resolve(argv)
    try:
        command.make_context(" ".join(path), list(rest), resilient_parsing=False)
    except ClickException as error:
        raise CommandError(f"{' '.join(['moa-tune', *argv])}: {error.format_message()}") from None


def check_names(argv: list[str]) -> None:
    """For prose mentions: the subcommands exist and every --option exists (values not needed)."""
    command, path, rest = _resolve(argv)
    known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)} | {"--help"}
    for token in rest:
        if token.startswith("--") and token.split("=", 1)[0] not in known:
            raise CommandError(f"{' '.join(path)}: no option '{token}'")


def _is_moa_tune(token: str) -> bool:
    return token == "moa-tune" or token.endswith("/bin/moa-tune")


def _join_continuations(text: str) -> list[str]:
    return text.replace("\\\n", " ").splitlines()


def _strip_heredocs(lines: list[str]) -> Iterator[str]:
    """Shell lines, with the bodies of here-documents (Dockerfiles, sweep files) left out."""
    end: str | None = None
    for line in lines:
        if end is not None:
            if line.strip() == end:
                end = None
            continue
        match = re.search(r"<<-?\s*['\"]?([A-Za-z_][A-Za-z0-9_]*)['\"]?", line)
        if match:
            end = match.group(1)
        yield line


def _tokens(line: str) -> list[str]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    return list(lexer)


def moa_tune_commands(shell_text: str) -> list[list[str]]:
    """Every ``moa-tune ...`` argv in a piece of shell text (continuations joined, heredoc bodies,
    comments and redirections left out; quoted strings that hold a command, as in
    ``ray exec CLUSTER "moa-tune status ..."``, are searched too)."""
    found: list[list[str]] = []
    for line in _strip_heredocs(_join_continuations(shell_text)):
        if "moa-tune" not in line:
            continue
        try:
            tokens = _tokens(line)
        except ValueError as error:
            raise CommandError(f"cannot tokenize: {line!r} ({error})") from None
        segment: list[str] = []
        for token in [*tokens, ";"]:
            if token and all(ch in "();<>|&" for ch in token):
                if segment and segment[-1].isdigit() and token[0] in "<>":
                    segment.pop()  # the 2 of 2>&1
                found.extend(_commands_in_segment(segment))
                segment = []
            else:
                segment.append(token)
    return found


COMMAND_PREFIXES = {"--", "exec", "time", "nohup", "sudo", "env", "then", "else", "do"}


def _commands_in_segment(segment: list[str]) -> list[list[str]]:
    """moa-tune in command position: first word (after VAR=value), or after ``--`` (kubectl exec,
    ray job submit) and the like; elsewhere (``kubectl get secret moa-tune``) it is a name."""
    for i, token in enumerate(segment):
        if not _is_moa_tune(token):
            continue
        before = segment[:i]
        if all(re.match(r"[A-Za-z_][A-Za-z0-9_]*=", t) for t in before) or (before and before[-1] in COMMAND_PREFIXES):
            return [segment[i + 1:]]
    nested: list[list[str]] = []
    for token in segment:
        if "moa-tune " in token:
            nested.extend(moa_tune_commands(token))
    return nested


def _yaml_strings(value) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _yaml_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _yaml_strings(item)


def _markdown_blocks(text: str) -> tuple[list[tuple[str, str]], str]:
    """(language, body) of every fenced block, and the prose outside them."""
    blocks: list[tuple[str, str]] = []
    prose: list[str] = []
    fence: str | None = None
    lang = ""
    indent = 0
    body: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if fence is None and stripped.startswith("```"):
            fence, lang, body = "```", stripped[3:].strip().lower(), []
            indent = len(line) - len(line.lstrip())  # a block inside a list item is indented
        elif fence is not None and stripped == fence:
            blocks.append((lang, "\n".join(body)))
            fence = None
        elif fence is not None:
            body.append(line[indent:] if not line[:indent].strip() else line.lstrip())
        else:
            prose.append(line)
    assert fence is None, "unclosed code block"
    return blocks, "\n".join(prose)


def _all_launch_commands() -> dict[str, list[list[str]]]:
    """Full commands by source: YAML strings, the job script, README shell blocks."""
    commands: dict[str, list[list[str]]] = {}
    for path in _yaml_files():
        for doc in _load_all(path):
            for text in _yaml_strings(doc):
                if not re.search(r"\s", text.strip()):
                    continue  # a name (cluster_name: moa-tune), not a command line
                commands.setdefault(str(path.relative_to(ROOT)), []).extend(moa_tune_commands(text))
    commands[str(SCRIPT.relative_to(ROOT))] = moa_tune_commands(SCRIPT.read_text())
    blocks, _ = _markdown_blocks(README.read_text())
    for lang, body in blocks:
        if lang in SHELL_LANGS:
            commands.setdefault(str(README.relative_to(ROOT)), []).extend(moa_tune_commands(body))
    return commands


def test_every_moa_tune_command_in_launch_parses() -> None:
    by_source = _all_launch_commands()
    failures = []
    for source, commands in by_source.items():
        for argv in commands:
            try:
                check_command(argv)
            except CommandError as error:
                failures.append(f"{source}: {error}")
    assert not failures, "\n".join(failures)
    counts = {source: len(commands) for source, commands in by_source.items()}
    # not vacuous: the files hold many commands, and all the steps of the walkthrough
    assert sum(counts.values()) >= 20, counts
    assert counts["launch/submit_sweep.sh"] >= 6, counts
    assert counts["launch/kuberay/rayjob.yaml"] >= 3, counts
    assert counts["launch/README.md"] >= 12, counts
    used = {tuple(_resolve(argv)[1][1:]) for commands in by_source.values() for argv in commands}
    assert {("sweep",), ("collect",), ("predict",), ("status",), ("report",)} <= used, used


def test_moa_tune_mentions_in_readme_prose_exist() -> None:
    _, prose = _markdown_blocks(README.read_text())
    spans = re.findall(r"`((?:\.venv/bin/)?moa-tune [^`]+)`", prose)
    assert len(spans) >= 3
    for span in spans:
        argv = _tokens(span)
        check_names(argv[1:])


def test_checker_rejects_what_the_cli_rejects() -> None:
    check_command(["sweep", "--config", "x.yaml", "--storage", "s3://$BUCKET/moa-tune", "--address", "auto"])
    check_command(["data", "synth", "--preset", "tiny", "--out", "$DIR"])
    check_command(["status", "results/x", "--json"])
    with pytest.raises(CommandError, match="no-such-flag"):
        check_command(["sweep", "--no-such-flag"])
    with pytest.raises(CommandError, match="no subcommand 'sweeep'"):
        check_command(["sweeep", "--name", "x"])
    with pytest.raises(CommandError, match="no subcommand 'synthesize'"):
        check_command(["data", "synthesize"])
    with pytest.raises(CommandError):  # a missing required argument
        check_command(["collect", "--address", "auto"])
    with pytest.raises(CommandError):  # an option without its value
        check_command(["sweep", "--storage"])
    with pytest.raises(CommandError):  # a value of the wrong type
        check_command(["collect", "results/x", "--top-k", "K"])
    with pytest.raises(CommandError):
        check_names(["predict", "--modle", "x"])
    # the extraction itself: continuations, chains, quoted commands, heredocs, comments
    text = ("export A=1 && moa-tune sweep \\\n  --name a --no-such-flag  # comment --x\n"
            'ray exec c.yaml "moa-tune status r/a" ; moa-tune report r/a 2>&1 | tee log\n'
            "cat > f <<'EOF'\nmoa-tune predict --bogus\nEOF\n")
    found = moa_tune_commands(text)
    assert found == [["sweep", "--name", "a", "--no-such-flag"], ["status", "r/a"], ["report", "r/a"]]
    with pytest.raises(CommandError, match="no-such-flag"):
        check_command(found[0])


# --- the job script's own options


def _script_options() -> set[str]:
    return set(re.findall(r"^\s+(--[a-z-]+)(?:\|[-a-z|]+)?\)", SCRIPT.read_text(), flags=re.M))


def _submit_invocations() -> list[tuple[str, list[str]]]:
    """Options passed to submit_sweep.sh anywhere in launch/ (comments of YAML files included)."""
    found = []
    readme_code = "\n".join(body for lang, body in _markdown_blocks(README.read_text())[0] if lang in SHELL_LANGS)
    for path in [*_yaml_files(), SCRIPT, README]:
        source = readme_code if path == README else path.read_text()
        text = "\n".join(re.sub(r"^\s*#\s?", "", line) for line in source.splitlines())
        for line in _join_continuations(text):
            if "submit_sweep.sh " not in line or "--" not in line.split("submit_sweep.sh", 1)[1]:
                continue
            tail = line.split("submit_sweep.sh", 1)[1]
            try:
                tokens = _tokens(tail)
            except ValueError:
                continue
            found.append((str(path.relative_to(ROOT)), [t for t in tokens if t.startswith("--")]))
    return found


def test_submit_sweep_options_exist() -> None:
    known = _script_options()
    assert {"--name", "--config", "--data", "--storage", "--results", "--resume"} <= known, known
    invocations = _submit_invocations()
    assert len(invocations) >= 6, invocations
    for source, options in invocations:
        assert set(options) <= known, f"{source}: {sorted(set(options) - known)}"
        assert "--name" in options and "--storage" in options, f"{source}: {options}"


def _run_script(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
    """Run submit_sweep.sh with a stub moa-tune that records its argv (no Ray, no training)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "calls.log"
    stub = bin_dir / "moa-tune"
    stub.write_text("#!/bin/sh\nfor a in \"$@\"; do printf '%s\\037' \"$a\" >> \"$MOA_STUB_LOG\"; done\n"
                    "printf '\\n' >> \"$MOA_STUB_LOG\"\n")
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    python_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{python_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "MOA_STUB_LOG": str(log), "HOME": str(tmp_path / "home")}
    result = subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    calls = [line.split("\x1f")[:-1] for line in log.read_text().splitlines()] if log.exists() else []
    return result, calls


def test_submit_sweep_runs_valid_commands(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    result, calls = _run_script(tmp_path, "--name", "job1", "--config", "search_spaces/sweeps/default.yaml",
                                "--storage", str(shared), "--results", str(tmp_path / "res"))
    assert result.returncode == 0, result.stderr
    assert [c[0] for c in calls] == ["sweep", "collect", "report", "status"]
    for argv in calls:
        check_command(argv)
    sweep = calls[0]
    assert sweep[sweep.index("--address") + 1] == "auto"
    assert sweep[sweep.index("--storage") + 1] == str(shared.resolve())
    assert calls[1][1] == str((tmp_path / "res" / "job1").resolve())
    # with a URI: the data is copied to the head first and the sweep folder to the storage after
    data = tmp_path / "bucket" / "lish-moa"
    data.mkdir(parents=True)
    (data / "train_features.csv").write_text("sig_id\n")
    (tmp_path / "res" / "job2").mkdir(parents=True)
    (tmp_path / "res" / "job2" / "trials.csv").write_text("stage\n")
    result, calls = _run_script(tmp_path, "--name", "job2", "--data", f"file://{data}",
                                "--storage", f"file://{tmp_path / 'bucket' / 'moa-tune'}", "--results",
                                str(tmp_path / "res"))
    assert result.returncode == 0, result.stderr
    calls = calls[4:]
    assert [c[0] for c in calls] == ["sweep", "collect", "report", "status"]
    for argv in calls:
        check_command(argv)
    copied = Path(calls[0][calls[0].index("--data") + 1])
    assert (copied / "train_features.csv").is_file()
    assert (tmp_path / "bucket" / "moa-tune" / "job2" / "trials.csv").is_file()
    # --resume
    result, calls = _run_script(tmp_path, "--name", "job2", "--resume", "--storage", str(shared),
                                "--results", str(tmp_path / "res"))
    assert result.returncode == 0, result.stderr
    resumed = calls[8]
    check_command(resumed)
    assert resumed[:2] == ["sweep", "--resume"]
    # required options
    result, _ = _run_script(tmp_path, "--name", "job3")
    assert result.returncode == 2 and "--storage" in result.stderr


# --------------------------------------------------------------------------------------------
# 4. KubeRay


def _kuberay_docs() -> dict[str, dict]:
    docs: dict[str, dict] = {}
    for path in sorted(KUBERAY.glob("*.yaml")):
        for doc in _load_all(path):
            docs[f"{path.name}:{doc['kind']}"] = doc
    return docs


def _cluster_specs() -> list[tuple[str, dict]]:
    docs = _kuberay_docs()
    return [("raycluster.yaml", docs["raycluster.yaml:RayCluster"]["spec"]),
            ("rayjob.yaml", docs["rayjob.yaml:RayJob"]["spec"]["rayClusterSpec"])]


def test_kuberay_kinds() -> None:
    docs = _kuberay_docs()
    assert docs["raycluster.yaml:RayCluster"]["apiVersion"] == "ray.io/v1"
    assert docs["rayjob.yaml:RayJob"]["apiVersion"] == "ray.io/v1"
    for key, doc in docs.items():
        assert doc["metadata"]["name"], key
        if doc["kind"] in ("RayCluster", "RayJob"):
            assert doc["apiVersion"] == "ray.io/v1", key
        else:
            assert doc["apiVersion"] == "v1" and doc["kind"] in ("ConfigMap", "PersistentVolumeClaim"), key


def test_rayjob_entrypoint() -> None:
    job = _kuberay_docs()["rayjob.yaml:RayJob"]["spec"]
    entrypoint = job["entrypoint"]
    assert "moa-tune sweep" in entrypoint and "moa-tune collect" in entrypoint
    assert entrypoint.index("moa-tune sweep") < entrypoint.index("moa-tune collect")
    commands = moa_tune_commands(entrypoint)
    for argv in commands:
        check_command(argv)
    sweep = next(argv for argv in commands if argv[0] == "sweep")
    collect = next(argv for argv in commands if argv[0] == "collect")
    results = sweep[sweep.index("--results") + 1]
    name = sweep[sweep.index("--name") + 1]
    assert collect[1] == f"{results}/{name}", "collect runs on the sweep's folder"
    assert sweep[sweep.index("--storage") + 1].split("://")[0] in ("s3", "gs")
    # the sweep file the entrypoint reads is the ConfigMap mounted on the head
    config = Path(sweep[sweep.index("--config") + 1])
    head = job["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in head["containers"][0]["volumeMounts"]}
    volume = next(v for v in head["volumes"] if v["name"] == mounts[str(config.parent)])
    configmap = _kuberay_docs()["rayjob.yaml:ConfigMap"]
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    assert config.name in configmap["data"]
    assert job["shutdownAfterJobFinishes"] is True


@pytest.mark.parametrize("index", [0, 1], ids=["raycluster", "rayjob"])
def test_kuberay_cluster_shape(index: int) -> None:
    source, spec = _cluster_specs()[index]
    assert spec["authOptions"]["mode"] == "token", source
    assert spec["enableInTreeAutoscaling"] is True, source
    head = spec["headGroupSpec"]
    assert head["rayStartParams"].get("num-cpus") == "0", source
    head_resources = head["template"]["spec"]["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in head_resources.get("limits", {}), source
    groups = spec["workerGroupSpecs"]
    gpu_groups = [g for g in groups if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]]
    assert gpu_groups, source
    for group in gpu_groups:
        assert 1 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], source
        assert group["maxReplicas"] > group["minReplicas"], source


@pytest.mark.parametrize("path", sorted(KUBERAY.glob("*.yaml")), ids=lambda p: p.name)
def test_kuberay_dashboard_host(path: Path) -> None:
    """The dashboard binds to all interfaces only behind the cluster network, and says so.

    Decision: on KubeRay the dashboard listens on 0.0.0.0 inside the pod network, because the
    operator, the autoscaler and the RayJob submitter pod reach its job API through the head
    service; that service must be ClusterIP (not LoadBalancer/NodePort) and the line must carry a
    comment saying it is behind the cluster network. Any other host must not be 0.0.0.0.
    """
    lines = path.read_text().splitlines()
    hosts = [i for i, line in enumerate(lines) if re.match(r"\s*dashboard-host\s*:", line)]
    assert hosts, f"{path.name}: set the dashboard host explicitly"
    for i in hosts:
        value = yaml.safe_load(lines[i].strip())["dashboard-host"]
        if value != "0.0.0.0":
            continue
        comment = " ".join(line for line in lines[max(0, i - 4): i + 1] if "#" in line).lower()
        assert "cluster network" in comment, f"{path.name}:{i + 1}: 0.0.0.0 without saying why"
    for doc in _load_all(path):
        spec = doc.get("spec", {})
        spec = spec.get("rayClusterSpec", spec)
        if "headGroupSpec" in spec:
            host = spec["headGroupSpec"]["rayStartParams"].get("dashboard-host")
            if host == "0.0.0.0":
                assert spec["headGroupSpec"].get("serviceType") == "ClusterIP", path.name


# --------------------------------------------------------------------------------------------
# the GPU sweep file


def _readme_gpu_sweep() -> str:
    blocks, _ = _markdown_blocks(README.read_text())
    for lang, body in blocks:
        match = re.search(r"cat > search_spaces/sweeps/gpu\.yaml <<'EOF'\n(.*?)\nEOF", body, flags=re.S)
        if match:
            return match.group(1) + "\n"
    raise AssertionError("README: no gpu.yaml here-document")


def test_gpu_sweep_file_is_valid_and_matches_the_configmap() -> None:
    from moa_tune.sweep_spec import SEARCH_SPACES, parse_sweep

    configmap = _kuberay_docs()["rayjob.yaml:ConfigMap"]["data"]["gpu.yaml"]
    assert _readme_gpu_sweep() == configmap, "README's gpu.yaml and the RayJob's ConfigMap differ"
    spec = parse_sweep(yaml.safe_load(configmap), "rayjob.yaml:gpu.yaml", SEARCH_SPACES / "sweeps")
    assert 0 < spec.resources["gpu"] < 1
    assert spec.max_concurrent and spec.max_concurrent > 1 / spec.resources["gpu"]
