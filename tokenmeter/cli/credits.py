"""`tokenmeter credits`: ask for a top-up of a wallet, list the requests, approve or reject one, through a running
`tokenmeter serve`'s API (:mod:`tokenmeter.serve.credit_routes`).

    tokenmeter credits request --wallet dept-credits --subject 研发部 --amount 5000 --reason "Q4 reports"
    tokenmeter credits requests [--state pending] [--wallet W [--subject S]] [--format table|json]
    tokenmeter credits approve ID [--comment TEXT]
    tokenmeter credits reject ID --comment TEXT
    tokenmeter credits cancel ID

serve's API token says the command may use the API; who is acting is sent besides it, one of two ways:

- ``--jwt TOKEN`` (or TOKENMETER_JWT): the person's JWT, which serve verifies with its TOKENMETER_JWT_SECRET or
  TOKENMETER_JWT_PUBLIC_KEY; works from any machine;
- ``--as-user NAME --groups a,b``: the identity headers an authenticating proxy would set; serve believes them
  only when this command runs on a peer in serve's TOKENMETER_TRUSTED_PROXIES (loopback by default: on serve's
  own machine, for whoever may read its API token there).

Exit codes: 0 done, 1 serve cannot be reached or failed, 2 bad input or refused (not an approver, decided, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from dataclasses import dataclass
from typing import Any, Final, TextIO

from tokenmeter.cli.api_tokens import TokenFileError, api_token, bearer_headers, refusal
from tokenmeter.cli.exit_codes import EXIT_BAD_INPUT, EXIT_OK, EXIT_UNAVAILABLE
from tokenmeter.errors import TokenmeterError
from tokenmeter.settings import get_settings

JWT_ENV: Final = "TOKENMETER_JWT"
JWT_HEADER: Final = "X-Tokenmeter-JWT"  # as tokenmeter.serve.people reads it
TIMEOUT_SECONDS: Final = 30.0
STATES: Final = ("pending", "approved", "rejected", "cancelled", "expired")


class CreditsError(TokenmeterError):
    """The command could not do what was asked; the message is its one line on stderr."""

    def __init__(self, message: str, exit_code: int = EXIT_UNAVAILABLE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def add_credits_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    credits = commands.add_parser(
        "credits",
        help="top-up requests for a wallet: ask, list, approve, reject (through a running serve)",
        description=__doc__.split("\n\n", 1)[0] if __doc__ else None,
    )
    actions = credits.add_subparsers(dest="credits_command", required=True, metavar="ACTION")
    ask = _with_person(actions.add_parser("request", help="ask for credits for a wallet"))
    ask.add_argument("--wallet", required=True, help="the wallet's name in the policy")
    ask.add_argument(
        "--subject", default="", help="whose wallet (a department, user or app; not for one-subject wallets)"
    )
    ask.add_argument("--amount", required=True, help="credits (in the wallet's unit), above 0")
    ask.add_argument("--reason", required=True, help="what the credits are for")
    ask.add_argument("--request-id", help="an id of your own, so that a retry is the same request (default: a new one)")
    listing = _with_person(actions.add_parser("requests", help="list requests (newest first)"))
    listing.add_argument("--state", choices=STATES)
    listing.add_argument("--wallet")
    listing.add_argument("--subject")
    listing.add_argument("--format", choices=("table", "json"), default="table")
    for name, text in (("approve", "approve a request"), ("reject", "reject a request"), ("cancel", "cancel yours")):
        action = _with_person(actions.add_parser(name, help=text))
        action.add_argument("request_id", metavar="ID")
        action.add_argument("--comment", required=name == "reject", default="", help="why (required to reject)")
    credits.set_defaults(run=lambda args, stdout, _stdin: run_credits(args, stdout))


def _with_person(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--api", metavar="URL", help="serve's API (default: TOKENMETER_API_URL when set, else the "
                                                     "serve holding TOKENMETER_CLICKHOUSE_URL's chDB directory, "
                                                     "else http://127.0.0.1:9400)")  # fmt: skip
    parser.add_argument("--jwt", metavar="TOKEN", help=f"your JWT, verified by serve (default: {JWT_ENV})")
    proxy_only = "believed only from serve's TOKENMETER_TRUSTED_PROXIES"
    parser.add_argument("--as-user", metavar="NAME", help=f"act as NAME by identity headers: {proxy_only}")
    parser.add_argument("--groups", default="", metavar="A,B", help="with --as-user: your SSO groups")
    return parser


def run_credits(args: argparse.Namespace, stdout: TextIO) -> int:
    try:
        document = _send(args)
    except (CreditsError, TokenFileError) as exc:
        sys.stderr.write(f"tokenmeter credits {args.credits_command}: {exc}\n")
        return exc.exit_code if isinstance(exc, CreditsError) else EXIT_UNAVAILABLE
    if args.credits_command == "requests" and args.format == "table":
        stdout.write(_table(document["requests"]))
    elif args.credits_command == "requests":
        stdout.write(json.dumps(document, ensure_ascii=False, indent=2) + "\n")
    else:
        stdout.write(_line(document) + "\n")
    stdout.flush()
    return EXIT_OK


def _send(args: argparse.Namespace) -> Any:
    command = args.credits_command
    if command == "request":
        body = {"wallet": args.wallet, "subject": args.subject, "amount": args.amount, "reason": args.reason,
                "request_id": args.request_id or uuid.uuid4().hex}  # fmt: skip
        return _call(args, "POST", "/v1/credits/requests", body=body)
    if command == "requests":
        params = {name: value for name in ("state", "wallet", "subject") if (value := getattr(args, name))}
        return _call(args, "GET", "/v1/credits/requests", params=params)
    return _call(args, "POST", f"/v1/credits/requests/{args.request_id}/{command}", body={"comment": args.comment})


@dataclass(frozen=True)
class _Api:
    url: str
    token_file: Any = None


def _api(args: argparse.Namespace) -> _Api:
    settings = get_settings()
    explicit = args.api or (settings.api_url if "api_url" in settings.model_fields_set else None)
    if explicit:
        return _Api(explicit.rstrip("/"))
    from tokenmeter.cli.serve_lookup import serve_holding_url

    serve = serve_holding_url(settings.clickhouse_url)
    if serve is not None:
        return _Api(serve.api.rstrip("/"), serve.api_token_file)
    return _Api(settings.api_url.rstrip("/"))


def person_headers(args: argparse.Namespace) -> dict[str, str]:
    """The headers that name the person acting: the JWT, else the proxy's identity headers; CreditsError if none."""
    token = args.jwt or os.environ.get(JWT_ENV)
    if token:
        return {JWT_HEADER: token}
    if args.as_user:
        settings = get_settings()
        return {settings.user_header[0]: args.as_user, settings.department_header[0]: args.groups}
    raise CreditsError(f"say who is acting: --jwt TOKEN (or {JWT_ENV}), or --as-user NAME --groups A,B (believed "
                       "only on a peer in serve's TOKENMETER_TRUSTED_PROXIES)", EXIT_BAD_INPUT)  # fmt: skip


def _call(args: argparse.Namespace, method: str, path: str, *, body: Any = None, params: Any = None) -> Any:
    import httpx

    api = _api(args)
    token = api_token(api.token_file)
    headers = {key: value.encode() for key, value in {**bearer_headers(token), **person_headers(args)}.items()}
    try:
        response = httpx.request(method, f"{api.url}{path}", headers=headers, json=body, params=params,
                                 timeout=TIMEOUT_SECONDS)  # fmt: skip
    except httpx.HTTPError as exc:
        raise CreditsError(f"cannot reach serve's API at {api.url} ({exc or type(exc).__name__}); start "
                           "`tokenmeter serve` or point --api / TOKENMETER_API_URL at it") from None  # fmt: skip
    error = _error_text(response)
    if response.status_code == 401 and "person acting" not in error:
        raise CreditsError(refusal(f"serve's API at {api.url}", token, "set TOKENMETER_API_TOKEN to serve's token"))
    if response.status_code >= 400:
        code = EXIT_BAD_INPUT if response.status_code < 500 else EXIT_UNAVAILABLE
        raise CreditsError(f"{api.url} answered {response.status_code}: {error}", code)
    return response.json()


def _error_text(response: Any) -> str:
    try:
        return str(response.json().get("error") or response.text[:300])
    except (ValueError, AttributeError):
        return response.text[:300].strip()


def _line(request: dict[str, Any]) -> str:
    """One request in a line: its id, state, what it asks and who approved."""
    unit = request.get("unit") or "credits"
    approved = ", ".join(f"{given['by']} (level {given['level']})" for given in request["approvals"]) or "nobody yet"
    text = (f"{request['id']}: {request['state']}: {request['amount']} {unit} for {request['account']}, asked by "
            f"{request['requester']}; approved by {approved} ({request['levels_needed']} level(s) needed)")  # fmt: skip
    if request["state"] == "pending" and request["next_approvers"]:
        text += f"; next: a member of {', '.join(request['next_approvers'])}"
    ended = request.get("ended")
    if ended and ended["kind"] != "approved":
        text += f"; {ended['kind']} by {ended['by']}" + (f": {ended['comment']}" if ended["comment"] else "")
    return text


def _table(requests: list[dict[str, Any]]) -> str:
    if not requests:
        return "no top-up requests\n"
    return "".join(_line(request) + "\n" for request in requests)
