"""A real Langchain-Chatchat 0.3.1.3 API server for tests, in its own virtual environment.

The venv (``make .venv-chatchat``; its pins conflict with ours) is named by
``TOKENMETER_CHATCHAT_VENV``. Chatchat is initialised in a temporary ``CHATCHAT_ROOT``,
its one model platform pointed at a local OpenAI-compatible server, and started with
environment variables only: ``opentelemetry-instrument chatchat start --api``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import yaml
from ready_process import free_port

STARTUP_TIMEOUT = 180.0

# What Chatchat's WebUI shows for one question, run in Chatchat's venv: the loops of its pages
# (webui_pages/dialogue/dialogue.py, webui_pages/kb_chat.py; Streamlit calls left out) and its
# own API client, ApiRequest (webui_pages/utils.py). Reads the request as JSON on stdin.
WEBUI_SCRIPT = r"""
import json, sys
import openai
from chatchat.server.callback_handler.agent_callback_handler import AgentStatus
from chatchat.webui_pages.utils import ApiRequest, check_error_msg

def dialogue_page(base, headers, params):
    client = openai.Client(base_url=f"{base}/chat", api_key="NONE", default_headers=headers)
    text, errors, models = "", [], []
    try:
        for d in client.chat.completions.create(**params):
            models.append(d.model)
            if d.status == AgentStatus.error:
                errors.append(d.choices[0].delta.content)
            elif d.status in (AgentStatus.llm_start, AgentStatus.llm_new_token, AgentStatus.llm_end):
                continue  # shown only with the page's "显示 Agent 过程" ticked
            elif d.status == AgentStatus.agent_finish:
                text = d.choices[0].delta.content or ""
            elif d.status is None and not getattr(d, "is_ref", False) and getattr(d, "tool_call", None) is None:
                text += d.choices[0].delta.content or ""
    except Exception as e:
        errors.append(getattr(e, "body", str(e)))  # the page: st.error(e.body)
    return {"text": text, "errors": errors, "models": models}

def kb_page(base, headers, kb_path, params):
    client = openai.Client(base_url=f"{base}/knowledge_base/{kb_path}", api_key="NONE", default_headers=headers)
    text, docs, errors, models, first = "", [], [], [], True
    try:
        for d in client.chat.completions.create(**params):
            models.append(d.model)
            if first:
                docs, first = d.docs, False
                continue
            text += d.choices[0].delta.content or ""
    except Exception as e:
        errors.append(getattr(e, "body", str(e)))
    return {"text": text, "docs": docs, "errors": errors, "models": models}

def file_chat(api, params):
    text, errors, d = "", [], {}
    for d in api.file_chat(**params):  # the file-chat loop of the 0.3 WebUI
        if error := check_error_msg(d):
            errors.append(error)
        elif chunk := d.get("answer"):
            text += chunk
    return {"text": text, "docs": d.get("docs", []), "errors": errors}

request = json.load(sys.stdin)
base, headers, page = request["base"], request["headers"], request["page"]
api = ApiRequest(base_url=base)
api.client.headers.update(headers)
if page == "dialogue":
    shown = dialogue_page(base, headers, request["params"])
elif page == "kb":
    shown = kb_page(base, headers, request["kb_path"], request["params"])
elif page == "file_chat":
    shown = file_chat(api, request["params"])
else:  # "events": what ApiRequest's stream reader yields for a streamed route
    response = api.post(request["path"], json=request["params"], stream=True)
    shown = {"events": list(api._httpx_stream2generator(response, as_json=True))}
print("WEBUI " + json.dumps(shown, ensure_ascii=False))
"""


def chatchat_venv() -> Path | None:
    value = os.environ.get("TOKENMETER_CHATCHAT_VENV")
    return Path(value) if value else None


def configure(root: Path, venv: Path, upstream: str, llms: list[str], embeddings: list[str]) -> int:
    """``chatchat init`` in ``root``, one OpenAI-compatible platform at ``upstream``; returns the API port."""
    env = {**os.environ, "CHATCHAT_ROOT": str(root)}
    result = subprocess.run([str(venv / "bin" / "chatchat"), "init"], cwd=root, env=env, capture_output=True,
                            text=True, timeout=300, check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    # Document loaders need NLTK data; Chatchat ships it but `init` does not copy it (offline host).
    bundled = next((venv / "lib").glob("python3*/site-packages/chatchat/data/nltk_data"))
    shutil.copytree(bundled, root / "data" / "nltk_data", dirs_exist_ok=True)
    models_file = root / "model_settings.yaml"
    models = yaml.safe_load(models_file.read_text(encoding="utf-8"))
    models["DEFAULT_LLM_MODEL"] = llms[0]
    models["DEFAULT_EMBEDDING_MODEL"] = embeddings[0]
    models["MODEL_PLATFORMS"] = [{
        "platform_name": "local", "platform_type": "openai", "api_base_url": upstream, "api_key": "EMPTY",
        "api_proxy": "", "api_concurrencies": 5, "auto_detect_model": False, "llm_models": llms,
        "embed_models": embeddings, "text2image_models": [], "image2text_models": [], "rerank_models": [],
        "speech2text_models": [], "text2speech_models": [],
    }]  # fmt: skip
    models_file.write_text(yaml.safe_dump(models, allow_unicode=True), encoding="utf-8")
    basic_file = root / "basic_settings.yaml"
    basic = yaml.safe_load(basic_file.read_text(encoding="utf-8"))
    port = free_port()
    basic["API_SERVER"] = {"host": "127.0.0.1", "port": port, "public_host": "127.0.0.1", "public_port": port}
    basic["WEBUI_SERVER"] = {"host": "127.0.0.1", "port": free_port()}
    basic_file.write_text(yaml.safe_dump(basic, allow_unicode=True), encoding="utf-8")
    return port


class ChatchatProcess:
    def __init__(self, root: Path, venv: Path, port: int, env: dict[str, str]) -> None:
        self.root = root
        self.venv = venv
        self.url = f"http://127.0.0.1:{port}"
        self.env = {**os.environ, "CHATCHAT_ROOT": str(root), **env}
        self.log = root / "chatchat.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ChatchatProcess:
        return self.launch().wait_until_ready()

    def launch(self) -> ChatchatProcess:
        """Start ``chatchat start --api`` (the launcher, in a session of its own) without waiting."""
        command = [str(self.venv / "bin" / "opentelemetry-instrument"), str(self.venv / "bin" / "chatchat"), "start",
                   "--api"]  # fmt: skip
        with self.log.open("wb") as log:
            self._proc = subprocess.Popen(command, cwd=self.root, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True)  # fmt: skip
        return self

    def wait_until_ready(self) -> ChatchatProcess:
        assert self._proc is not None, "launch() first"
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"chatchat exited ({self._proc.returncode}): {self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/docs", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"chatchat did not start: {self.log_tail()}")

    def log_tail(self, characters: int = 4000) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-characters:]

    def post(self, path: str, body: dict[str, Any], user: str, department: str, **kwargs: Any) -> httpx.Response:
        headers = {"X-Forwarded-User": user, "X-Department": department.encode()}
        return httpx.post(f"{self.url}{path}", json=body, headers=headers, timeout=120, **kwargs)  # type: ignore[arg-type]

    def webui(self, page: str, user: str, department: str, **request: Any) -> dict[str, Any]:
        """What Chatchat's WebUI shows (WEBUI_SCRIPT): ``dialogue`` (params of the chat call), ``kb``
        (kb_path, e.g. ``local_kb/hr``, and params), ``file_chat`` (ApiRequest.file_chat's arguments),
        ``events`` (path, params: ApiRequest's parsed events). The SSO proxy's headers name the user."""
        spec = {"page": page, "base": self.url, "headers": {"X-Forwarded-User": user, "X-Department": department},
                **request}  # fmt: skip
        result = subprocess.run([str(self.venv / "bin" / "python"), "-c", WEBUI_SCRIPT], input=json.dumps(spec),
                                cwd=self.root, env=self.env, capture_output=True, text=True, timeout=300,
                                check=False)  # fmt: skip
        shown = [line for line in result.stdout.splitlines() if line.startswith("WEBUI ")]
        assert result.returncode == 0 and shown, result.stdout[-2000:] + result.stderr[-3000:]
        answer: dict[str, Any] = json.loads(shown[-1][len("WEBUI ") :])
        return answer

    @property
    def launcher_pid(self) -> int:
        """``chatchat start``: it runs the API server in a spawned child process."""
        assert self._proc is not None
        return self._proc.pid

    def api_server_pid(self) -> int:
        """The launcher's child process that listens on the API port."""
        port = int(self.url.rsplit(":", 1)[1])
        inodes = _listening_socket_inodes(port)
        for child in _children(self.launcher_pid):
            with contextlib.suppress(OSError):
                if any(os.readlink(fd) in inodes for fd in Path(f"/proc/{child}/fd").iterdir()):
                    return child
        raise AssertionError(f"no child of the launcher listens on {port}: {self.log_tail()}")

    def stop_with(self, signal_number: int, *, to: str) -> None:
        """Send a signal the way a user or a service manager would: to the ``group`` (Ctrl-C in a
        terminal, systemd's default), to the ``launcher`` only (``kill <pid>``), or to the ``api`` child."""
        if to == "group":
            os.killpg(self.launcher_pid, signal_number)
        elif to == "launcher":
            os.kill(self.launcher_pid, signal_number)
        elif to == "api":
            os.kill(self.api_server_pid(), signal_number)
        else:
            raise ValueError(f"to={to!r}: group, launcher or api")

    def wait_for_exit(self, timeout: float = 120.0) -> int:
        """The launcher's exit status once it and every process of its group have ended."""
        assert self._proc is not None
        returncode = self._proc.wait(timeout)
        deadline = time.monotonic() + timeout
        while _group_alive(self.launcher_pid):
            if time.monotonic() > deadline:
                raise AssertionError(f"processes of chatchat's group outlived the launcher: {self.log_tail()}")
            time.sleep(0.2)
        return returncode

    def stop(self) -> None:
        if self._proc is None:
            return
        # `chatchat start` runs the API in a child process: stop the whole session.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, 15)
        try:
            self._proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self._proc.pid, 9)
            self._proc.wait(30)
        self._proc = None


def _children(pid: int) -> list[int]:
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children.extend(int(child) for child in (task / "children").read_text().split())
    return children


def _listening_socket_inodes(port: int) -> set[str]:
    """``socket:[inode]`` of the sockets listening on ``port`` (as /proc/<pid>/fd links name them)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                    inodes.add(f"socket:[{fields[9]}]")
    return inodes


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
