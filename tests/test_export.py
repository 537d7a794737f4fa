"""`rlhfv-nb export` on a tiny LoRA DDPO run trained for 2 steps and evaluated on the synthetic world.

The merged folder is loaded in a fresh interpreter where peft and rlhfv_nb cannot be imported, and gives the adapter
model's logits. The push goes to a stand-in Hub: a local HTTP server speaking the endpoints `HfApi.create_repo` and
`upload_folder` call (repos/create, validate-yaml, preupload, the git-lfs batch API with basic PUT uploads, commit).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from fnmatch import fnmatch
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from huggingface_hub import ModelCard
from PIL import Image
from tiny_run import CPU_TINY, SHAPE, make_run

from rlhfv_nb import pipeline
from rlhfv_nb.cli import build_parser
from rlhfv_nb.config import Config, load_config
from rlhfv_nb.data import read_parquet, write_parquet
from rlhfv_nb.export import export_model, run_export
from rlhfv_nb.files import read_json
from rlhfv_nb.modeling import load_model, load_processor

GAMMA = 2.0
LORA = {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0}
TOKEN = "hf_stand_in_write_token"
REPO = "someone/tiny-ddpo"
TEXTS = ["USER: <image>\nDescribe the image. ASSISTANT: There is a red ball in the middle of the picture.",
         "USER: <image>\nDescribe the image. ASSISTANT: A cup"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Config:
    """The tiny run: LoRA DDPO at gamma 2 trained 2 steps (gamma 1 configured, never trained), both models evaluated
    on the synthetic world, metrics.json written as notebooks 03 and 04 write it."""
    from rlhfv_nb.evaluate.suite import run_benchmarks
    from rlhfv_nb.launch import ddpo_inputs
    from rlhfv_nb.train import read_log

    params = make_run(tmp_path_factory.mktemp("export") / "run", pairs=4)
    params["model"]["lora"] = LORA
    params["ddpo"].update(gamma=GAMMA, ablation_gammas=[1.0], max_steps=2, batch_size=2, lr=1e-2)
    params["data"].update(sft_images=8, feedback_images=1, eval_images=2)
    params["evaluation"] = {"benchmarks": ["world_chair", "world_pope"], "max_new_tokens": 8, "limit": 4}
    cfg = load_config(CPU_TINY, **params)
    rows, cache = ddpo_inputs(cfg, compute_missing=True)
    final = pipeline.run_ddpo(cfg, rows, cache, GAMMA)
    last = [r for r in read_log(final.parent / "log.jsonl") if "ddpo_loss" in r][-1]
    pipeline.update_metrics(cfg, "ddpo", {"gamma=2": {"model": str(final), "pairs": len(rows),
                                                      "ddpo_loss": last["ddpo_loss"]}})
    pipeline.prepare_data(cfg)  # the world's held-out items (its preference pairs stay make_run's)
    suite = run_benchmarks(cfg, {"SFT": pipeline.sft_model_path(cfg), "DDPO gamma=2": str(final)})
    pipeline.update_metrics(cfg, "evaluation", {**suite.to_dict(), "table": suite.table().to_dict(orient="index"),
                                                "column_sources": suite.column_sources().to_dict(orient="index")})
    return cfg


@pytest.fixture(scope="module")
def merged(run: Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_model(run, out_dir=tmp_path_factory.mktemp("exports") / "merged")


def _images() -> list[Image.Image]:
    return [Image.new("RGB", (SHAPE.image_size, SHAPE.image_size), rgb) for rgb in ((200, 30, 30), (30, 30, 200))]


def _adapter_logits(run: Config) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The batch and logits of the trained model as the run loads it: base + LoRA adapter (peft)."""
    final = run.layout.ddpo(GAMMA).final
    model = load_model(final, run.model).eval()
    batch = dict(load_processor(final, run.model)(images=_images(), text=TEXTS, return_tensors="pt", padding=True))
    with torch.no_grad():
        return batch, model(**batch).logits


PLAIN_LOAD = """
import sys
sys.modules["peft"] = sys.modules["rlhfv_nb"] = None  # neither can be imported here
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

folder, out, side = sys.argv[1], sys.argv[2], int(sys.argv[3])
texts = {texts!r}
images = [Image.new("RGB", (side, side), rgb) for rgb in ((200, 30, 30), (30, 30, 200))]
model = AutoModelForImageTextToText.from_pretrained(folder).eval()
batch = dict(AutoProcessor.from_pretrained(folder)(images=images, text=texts, return_tensors="pt", padding=True))
with torch.no_grad():
    torch.save({{"batch": batch, "logits": model(**batch).logits, "class": type(model).__name__}}, out)
"""


def test_the_merged_model_loads_with_plain_transformers_and_gives_the_adapter_models_logits(run, merged, tmp_path):
    assert (merged / "model.safetensors").exists() and (merged / "config.json").exists()
    assert not [p.name for p in merged.iterdir() if p.name.startswith("adapter_") or p.suffix == ".bin"]
    script = tmp_path / "plain_load.py"
    script.write_text(PLAIN_LOAD.format(texts=TEXTS))
    subprocess.run([sys.executable, str(script), str(merged), str(tmp_path / "plain.pt"), str(SHAPE.image_size)],
                   cwd=tmp_path, check=True, env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    plain = torch.load(tmp_path / "plain.pt")
    batch, logits = _adapter_logits(run)
    assert plain["class"] == "LlavaForConditionalGeneration"
    assert batch.keys() == plain["batch"].keys() and all(torch.equal(batch[k], plain["batch"][k]) for k in batch)
    assert (logits - plain["logits"]).abs().max().item() <= 1e-5
    base = load_model(run.layout.base, run.model).eval()
    with torch.no_grad():
        assert (logits - base(**batch).logits).abs().max().item() > 1e-3  # the 2 steps moved it: a real check


def test_the_export_names_no_path_of_this_machine(run, merged):
    machine = {str(run.run_path), str(run.run_path.resolve()), str(merged.parent), str(Path.home())}
    texts = {p.name: p.read_text() for p in merged.iterdir() if p.suffix in (".json", ".md", ".jinja")}
    assert len(texts) >= 5
    assert {name: [m for m in machine if m in text] for name, text in texts.items() if any(m in text for m in machine)
            } == {}


def _card_rows(card: ModelCard) -> dict[str, list[str]]:
    """First cell -> the other cells of every markdown table row of the card."""
    rows = {}
    for line in card.text.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            rows[cells[0]] = cells[1:]
    return rows


def test_the_model_card_holds_the_recipe_the_data_and_the_metrics(run, merged):
    card = ModelCard.load(merged / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "image-text-to-text"
    assert {"rlhf-v", "ddpo", "dpo", "vision-language"} <= set(card.data.tags)
    assert card.data.base_model is None and card.data.datasets is None  # the tiny base and the run's own pairs
    rows = _card_rows(card)
    recipe = {"`ddpo.gamma`": "2", "`ddpo.beta`": "0.5", "`ddpo.lr`": "0.01", "`ddpo.max_steps`": "2",
              "`ddpo.batch_size`": "2", "`ddpo.use_average`": str(run.ddpo.use_average),
              "`ddpo.sft_weight`": f"{run.ddpo.sft_weight:g}", "`model.lora.r`": "4", "`model.lora.alpha`": "8",
              "`seed`": "0"}
    assert {key: rows[key] for key in recipe} == {key: [value] for key, value in recipe.items()}
    assert "Preference pairs (4 pairs): correctional feedback the run collected" in card.text
    assert "stage 03_ddpo recorded no manifest" in card.text and "LoRA adapters merged into the base" in card.text

    evaluation = read_json(run.layout.metrics)["evaluation"]
    table, sources = evaluation["table"], evaluation["column_sources"]
    assert rows["metric"] == ["DDPO gamma=2", "SFT", "scored by"]
    columns = [c for c in table["DDPO gamma=2"] if c not in ("judge", "notes")]
    assert "World Resp. (CHAIRs_refine)" in columns and "POPE world acc" in columns
    for column in columns:
        *cells, scored_by = rows[column]
        for cell, model in zip(cells, ("DDPO gamma=2", "SFT")):
            value = table[model][column]  # None: undefined on these answers (no object mentioned)
            assert cell == "-" if value is None else float(cell) == pytest.approx(value, rel=1e-3, abs=1e-9)
        assert scored_by == f"{sources[column]['scored by']}; no LLM"  # the world benchmarks have no judge
    assert "ddpo_loss" in card.text


def test_the_recipe_is_the_one_the_stage_recorded(run, tmp_path):
    pipeline.mark_done(run, "03_ddpo")  # as notebook 03 does when it finishes
    try:
        later = load_config(CPU_TINY, **{**run.to_dict(), "ddpo": {**run.to_dict()["ddpo"], "beta": 0.9}})
        card = ModelCard.load(export_model(later, out_dir=tmp_path / "out") / "README.md")
    finally:
        run.layout.manifest("03_ddpo").unlink()
    assert _card_rows(card)["`ddpo.beta`"] == ["0.5"]
    assert "as stage 03_ddpo recorded them (the params given differ: ddpo.beta: 0.5 -> 0.9)" in card.text


def test_no_merge_keeps_the_adapter(run, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    out = export_model(run, out_dir=tmp_path / "adapter", merge=False)
    assert {p.name for p in out.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors", "README.md"}
    assert not (out / "model.safetensors").exists()
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "peft" and "a LoRA adapter (peft)" in card.text
    batch, logits = _adapter_logits(run)
    model = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(run.layout.base), out).eval()
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, logits)


def test_the_sft_model_exports_with_its_own_recipe(run, tmp_path):
    from transformers import AutoModelForImageTextToText

    values = run.to_dict()
    sft = load_config(CPU_TINY, **{**values, "sft": {**values["sft"], "enabled": True, "max_steps": 1, "batch_size": 4,
                                                     "lr": 1e-2}})
    # SFT on the pairs' chosen answers, in the words the tiny tokenizer knows (the world's captions are too long there)
    pairs = read_parquet(sft.layout.feedback_preferences)
    write_parquet([{"uid": r["uid"], "image": r["image"], "question": r["question"], "answer": r["chosen"]}
                   for r in pairs], sft.layout.sft_rows)
    folder = Path(pipeline.run_sft(sft))
    out = export_model(sft, "sft", out_dir=tmp_path / "sft")
    card = ModelCard.load(out / "README.md")
    rows = _card_rows(card)
    assert rows["`sft.max_steps`"] == ["1"] and rows["`sft.lr`"] == ["0.01"] and "`ddpo.gamma`" not in rows
    assert "trained with supervised fine-tuning" in card.text
    assert "Supervised fine-tuning: the run's synthetic image world" in card.text  # data.sft_source, as configured
    batch = dict(load_processor(folder, sft.model)(images=_images(), text=TEXTS, return_tensors="pt", padding=True))
    with torch.no_grad():
        trained = load_model(folder, sft.model).eval()(**batch).logits
        exported = AutoModelForImageTextToText.from_pretrained(out).eval()(**batch).logits
    assert (trained - exported).abs().max().item() <= 1e-5


def _cli(*argv: str) -> argparse.Namespace:
    """`rlhfv-nb export ARGV` as the console command parses it."""
    return build_parser().parse_args(["export", *argv])


@pytest.fixture
def params_file(run: Config, tmp_path: Path) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(run.to_dict()))
    return path


@pytest.mark.parametrize(("argv", "message"), [
    (["--gamma", "1"], r"no trained model in \S+/ddpo/gamma1/final yet: run stage 03_ddpo"),
    (["--gamma", "3"], r"gamma 3 is not one of this run's gammas \['2', '1'\]"),
    (["--model", "sft"], r"trains no SFT model \(sft.enabled is false\)"),
    (["--set", "ddpo.gamma=4"], r"no trained model in \S+/ddpo/gamma4/final yet: run stage 03_ddpo"),
])
def test_models_the_run_lacks_are_named_with_the_stage_to_run(params_file, tmp_path, capsys, argv, message):
    assert run_export(_cli(str(params_file), "--out", str(tmp_path / "out"), *argv)) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_an_export_never_writes_into_a_folder_with_files(params_file, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    assert run_export(_cli(str(params_file), "--out", str(tmp_path / "out"))) == 2
    assert "is not empty" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["notes.txt"]


# ---------------------------------------------------------------- the stand-in Hub
LFS_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.onnx", "*.msgpack", "*.model")
LFS_MIN_SIZE = 10 * 1024 * 1024


class StandInHub(ThreadingHTTPServer):
    """Model repositories in memory behind the Hub's HTTP API for create_repo + upload_folder.

    Files matching the Hub's default .gitattributes LFS patterns (or of 10 MiB and more) go through git-lfs (batch
    API, a basic PUT checked against its sha256, verify), the others inline in the commit. Every API call must carry
    the token; the PUTs go, as on the Hub, to a storage URL the batch answer names.
    """

    daemon_threads = True

    def __init__(self, token: str):
        super().__init__(("127.0.0.1", 0), _HubHandler)
        self.token = token
        self.repos: dict[str, dict[str, bytes]] = {}
        self.lfs: dict[str, bytes] = {}
        self.requests: list[tuple[str, str, bool]] = []  # method, path, authorised
        self.commits: list[list[dict[str, Any]]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: StandInHub
    ROUTES = (
        ("POST", r"/api/repos/create", "create_repo"),
        ("POST", r"/api/validate-yaml", "validate_yaml"),
        ("POST", r"/api/models/(?P<repo>[^/]+/[^/]+)/preupload/(?P<rev>[^/]+)", "preupload"),
        ("POST", r"/(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch", "lfs_batch"),
        ("PUT", r"/storage/(?P<oid>[0-9a-f]{64})", "lfs_put"),
        ("POST", r"/(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/verify", "lfs_verify"),
        ("POST", r"/api/models/(?P<repo>[^/]+/[^/]+)/commit/(?P<rev>[^/]+)", "commit"),
    )

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_PUT(self) -> None:
        self._route("PUT")

    def _route(self, method: str) -> None:
        path = self.path.split("?")[0]
        authorised = self.headers.get("Authorization") == f"Bearer {self.server.token}"
        self.server.requests.append((method, path, authorised))
        body = self._body()
        for route_method, pattern, name in self.ROUTES:
            match = re.fullmatch(pattern, path)
            if route_method == method and match:
                if name != "lfs_put" and not authorised:
                    return self._send(401, {"error": "Invalid credentials in Authorization header"})
                return getattr(self, name)(body, **match.groupdict())
        self._send(404, {"error": f"no route {method} {path}"})

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length", 0)))
        data = b""
        while size := int(self.rfile.readline().split(b";")[0], 16):
            data += self.rfile.read(size)
            self.rfile.readline()
        self.rfile.readline()
        return data

    def _send(self, status: int, value: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(value).encode()
        self.send_response(status)
        for key, header in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(key, header)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _repo(self, repo: str) -> dict[str, bytes] | None:
        if repo not in self.server.repos:
            self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        return self.server.repos.get(repo)

    def create_repo(self, body: bytes) -> None:
        request = json.loads(body)
        repo = f"{request.get('organization') or 'user'}/{request['name']}"
        if request.get("type", "model") != "model":
            return self._send(400, {"error": "the stand-in Hub holds model repositories only"})
        if repo in self.server.repos:
            return self._send(409, {"error": "You already created this model repo", "url": f"{self.server.url}/{repo}"})
        self.server.repos[repo] = {}
        self._send(200, {"url": f"{self.server.url}/{repo}", "name": repo})

    def validate_yaml(self, body: bytes) -> None:
        content = json.loads(body)["content"]
        front = re.match(r"---\n(.*?)\n---\n", content, re.S)
        metadata = yaml.safe_load(front.group(1)) if front else None
        if not isinstance(metadata, dict):
            return self._send(400, {"errors": [{"message": "README.md: no YAML metadata block"}]})
        self._send(200, {"errors": [], "warnings": []})

    def preupload(self, body: bytes, repo: str, rev: str) -> None:
        if self._repo(repo) is None:
            return
        files = json.loads(body)["files"]
        self._send(200, {"files": [
            {"path": f["path"], "shouldIgnore": False, "oid": None,
             "uploadMode": "lfs" if f["size"] >= LFS_MIN_SIZE or any(fnmatch(f["path"], p) for p in LFS_PATTERNS)
             else "regular"} for f in files]})

    def lfs_batch(self, body: bytes, repo: str) -> None:
        request = json.loads(body)
        if self._repo(repo) is None:
            return
        if request["operation"] != "upload" or "basic" not in request["transfers"]:
            return self._send(422, {"message": "the stand-in Hub takes basic LFS uploads only"})
        objects = [{"oid": o["oid"], "size": o["size"], "authenticated": True} | (
            {} if o["oid"] in self.server.lfs else {"actions": {
                "upload": {"href": f"{self.server.url}/storage/{o['oid']}"},
                "verify": {"href": f"{self.server.url}/{repo}.git/info/lfs/objects/verify"}}})
            for o in request["objects"]]
        self._send(200, {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"})

    def lfs_put(self, body: bytes, oid: str) -> None:
        if hashlib.sha256(body).hexdigest() != oid:
            return self._send(400, {"error": "content does not match its sha256"})
        self.server.lfs[oid] = body
        self._send(200, {})

    def lfs_verify(self, body: bytes, repo: str) -> None:
        request = json.loads(body)
        stored = self.server.lfs.get(request["oid"])
        if stored is None or len(stored) != request["size"]:
            return self._send(404, {"message": "object not uploaded"})
        self._send(200, {"message": "verified"})

    def commit(self, body: bytes, repo: str, rev: str) -> None:
        files = self._repo(repo)
        if files is None:
            return
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0]["key"] != "header" or not lines[0]["value"]["summary"]:
            return self._send(400, {"error": "a commit starts with its header"})
        for line in lines[1:]:
            value = line["value"]
            if line["key"] == "file" and value["encoding"] == "base64":
                files[value["path"]] = base64.b64decode(value["content"])
            elif line["key"] == "lfsFile" and len(self.server.lfs.get(value["oid"], b"")) == value["size"] > 0:
                files[value["path"]] = self.server.lfs[value["oid"]]
            else:
                return self._send(422, {"error": f"cannot commit {line['key']} {value.get('path')}"})
        self.server.commits.append(lines)
        oid = hashlib.sha1(body).hexdigest()
        self._send(200, {"success": True, "commitOid": oid, "commitUrl": f"{self.server.url}/{repo}/commit/{oid}"})


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[StandInHub]:
    """The stand-in Hub at HF_ENDPOINT, with HF_TOKEN its token. huggingface_hub uploads large files through xet
    when hf_xet is installed; HF_HUB_DISABLE_XET (read at import, so set on its constants here) keeps them on the
    git-lfs protocol, which this stand-in speaks."""
    from huggingface_hub import constants

    server = StandInHub(TOKEN)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    yield server
    server.shutdown()
    server.server_close()


def test_push_to_hub_uploads_the_export(hub, params_file, tmp_path, capsys):
    out = tmp_path / "pushed"
    assert run_export(_cli(str(params_file), "--out", str(out), "--push-to-hub", REPO)) == 0, capsys.readouterr().err
    local = {p.name: p.read_bytes() for p in out.iterdir()}
    assert hub.repos[REPO] == local  # every file arrived, byte for byte
    (commit,) = hub.commits
    kinds = {line["value"]["path"]: line["key"] for line in commit[1:]}
    assert kinds["model.safetensors"] == "lfsFile" and kinds["README.md"] == kinds["config.json"] == "file"
    assert hashlib.sha256(local["model.safetensors"]).hexdigest() in hub.lfs
    assert all(authorised for method, path, authorised in hub.requests if not path.startswith("/storage/"))
    assert ("POST", "/api/repos/create", True) in hub.requests
    assert ModelCard(local["README.md"].decode()).data.library_name == "transformers"

    again = tmp_path / "again"  # a second push to the same repository: it exists (409), the commit goes on top
    assert run_export(_cli(str(params_file), "--out", str(again), "--push-to-hub", REPO)) == 0
    assert len(hub.commits) == 2 and hub.repos[REPO]["README.md"] == (again / "README.md").read_bytes()


def test_push_needs_a_token_in_the_environment(hub, params_file, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN")
    assert run_export(_cli(str(params_file), "--out", str(tmp_path / "out"), "--push-to-hub", REPO)) == 2
    assert "HF_TOKEN" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and hub.requests == []


def test_a_refused_upload_leaves_the_export_and_says_how_to_retry(hub, params_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", "hf_not_the_token")
    assert run_export(_cli(str(params_file), "--out", str(tmp_path / "out"), "--push-to-hub", REPO)) == 1
    assert f"hf upload {REPO}" in capsys.readouterr().err
    assert (tmp_path / "out" / "model.safetensors").exists() and hub.repos == {}
