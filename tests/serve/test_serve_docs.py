"""The API's docs: /docs and /redoc load only what the API serves, and every example that the
OpenAPI document gives ("Try it out" sends it as it is) succeeds against the app."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest
from fastapi.testclient import TestClient

from modalfuse.config import Settings
from modalfuse.serve.app import create_app
from prod_helpers import API_KEY, AUTH, job_inputs, wait_for

PAGES = ["/docs", "/redoc"]
# An attribute that loads something, and the spec URL in the Swagger UI page's script.
URL_IN_HTML = re.compile(r"""\b(?:src|href|spec-url)="([^"]*)"|\burl: '([^']*)'""")


@pytest.fixture(scope="module")
def client(predictor, fixture_bundle, fixture_dataset, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("serve-docs")
    (data_dir / "datasets").mkdir()
    (data_dir / "datasets" / fixture_dataset.spec.name).symlink_to(fixture_dataset.root)
    # A configured bundle, so that /admin/reload's example (reload the server's own source) works.
    settings = Settings(data_dir=data_dir, api_key=API_KEY, bundle=fixture_bundle.path)
    with TestClient(create_app(settings, predictor=predictor)) as c:
        yield c


@pytest.fixture(scope="module")
def schema(client) -> dict[str, Any]:
    return client.get("/openapi.json").json()


@pytest.fixture(scope="module")
def example(predictor) -> dict[str, Any]:
    return predictor.bundle.meta["example"]


def resolve(schema: dict, node: dict) -> dict:
    while "$ref" in node:
        node = schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]
    return node


def json_examples(schema: dict, media: dict) -> dict[str, Any]:
    """The bodies Swagger UI offers for a JSON request: the media type's named examples, else
    its `example`, else the schema's `examples` / `example`."""
    if "examples" in media:
        return {name: ex["value"] for name, ex in media["examples"].items()}
    if "example" in media:
        return {"example": media["example"]}
    body = resolve(schema, media["schema"])
    if body.get("examples"):
        return {f"schema[{i}]": ex for i, ex in enumerate(body["examples"])}
    return {"example": body["example"]} if "example" in body else {}


def operations(schema: dict):
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            yield method, path, op


def uploads(example: dict, dataset) -> dict[str, dict[str, tuple[str, bytes]]]:
    """The files a person chooses in "Try it out", per multipart operation."""
    table, images, _ = job_inputs(dataset, 3)
    return {
        "/v1/predict/upload": {"image": ("example.png", base64.b64decode(example["image_base64"]))},
        "/v1/jobs": {"table": ("rows.csv", table), "images": ("images.zip", images)},
    }


def call_examples(client, schema: dict, method: str, path: str, op: dict,
                  files_for: dict, path_values: dict[str, str]) -> dict[str, Any]:
    """Send each documented example of one operation; returns {example name: response}."""
    headers = dict(AUTH) if op.get("security") else {}
    url = path
    query: dict[str, Any] = {}
    for p in op.get("parameters", []):
        if p["in"] == "path":
            assert p["name"] in path_values, f"{method} {path}: no value for {p['name']}"
            url = url.replace("{" + p["name"] + "}", path_values[p["name"]])
        elif "example" in p or "examples" in p.get("schema", {}):
            query[p["name"]] = p.get("example", p.get("schema", {}).get("examples", [None])[0])
        else:
            assert not p.get("required"), f"{method} {path}: {p['name']} has no example"
    content = op.get("requestBody", {}).get("content", {})
    if "application/json" in content:
        bodies = json_examples(schema, content["application/json"])
        assert bodies, f"{method} {path} documents no example body"
        return {name: client.request(method, url, json=body, params=query, headers=headers)
                for name, body in bodies.items()}
    if "multipart/form-data" in content:
        form = resolve(schema, content["multipart/form-data"]["schema"])
        data = {k: v["examples"][0] for k, v in form["properties"].items() if v.get("examples")}
        files = files_for.get(path, {})
        missing = set(form.get("required", [])) - set(data) - set(files)
        assert not missing, f"{method} {path}: nothing to send for {missing}"
        return {"form": client.request(method, url, data=data, files=files, params=query,
                                       headers=headers)}
    assert not op.get("requestBody", {}).get("required"), f"{method} {path}: unknown body"
    return {"no body": client.request(method, url, params=query, headers=headers)}


def test_every_documented_example_succeeds(client, schema, example, fixture_dataset):
    files_for = uploads(example, fixture_dataset)
    ops = list(operations(schema))
    # Operations that need an id from an earlier answer go last, once the job is done.
    first = [o for o in ops if "{" not in o[1]]
    later = [o for o in ops if "{" in o[1]]
    answers: dict[str, Any] = {}
    for method, path, op in first:
        for name, r in call_examples(client, schema, method, path, op, files_for, {}).items():
            answers[f"{method.upper()} {path} [{name}]"] = r
    job = answers["POST /v1/jobs [form]"].json()
    assert wait_for(client.get, job["id"])["state"] == "succeeded"
    for method, path, op in later:
        for name, r in call_examples(client, schema, method, path, op, files_for,
                                     {"job_id": job["id"]}).items():
            answers[f"{method.upper()} {path} [{name}]"] = r
    failed = {k: f"{r.status_code} {r.text[:300]}" for k, r in answers.items()
              if not 200 <= r.status_code < 300}
    assert not failed, json.dumps(failed, indent=1)
    assert len(answers) >= len(ops) >= 12, sorted(answers)


def test_examples_are_real_requests_not_placeholders(schema, example, predictor):
    predict = schema["paths"]["/v1/predict/batch"]["post"]["requestBody"]["content"]
    rows = json_examples(schema, predict["application/json"])
    assert rows["rows"][0] == example and len(rows["rows"]) == 2
    upload = resolve(schema, schema["paths"]["/v1/predict/upload"]["post"]["requestBody"]
                     ["content"]["multipart/form-data"]["schema"])
    assert json.loads(upload["properties"]["fields"]["examples"][0]) == example["fields"]
    assert "choose the image file" in schema["paths"]["/v1/predict/upload"]["post"]["description"]
    text = json.dumps(schema)
    assert "additionalProp1" not in text
    for method, path, op in operations(schema):
        if op.get("security"):
            assert "Authorize" in op["description"], (method, path)


def test_examples_that_fail_are_answered_as_such(client, example):
    # The batch example with a bad image: that row is an error entry, the other is scored.
    bad = [example, {**example, "image_base64": "not base64!"}]
    body = client.post("/v1/predict/batch", json=bad).json()
    assert body["errors"] == 1 and body["predictions"][0]["label"]
    assert "base64" in body["predictions"][1]["error"]["image_base64"]


@pytest.mark.parametrize("page", PAGES)
def test_docs_pages_load_only_same_origin_assets(client, page):
    r = client.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "http" not in r.text, "the page names an outside host"  # no absolute URL at all
    assert "fonts.googleapis" not in r.text
    urls = [a or b for a, b in URL_IN_HTML.findall(r.text)]
    assert "/openapi.json" in urls and any(u.endswith(".js") for u in urls), urls
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url
        asset = client.get(url)
        assert asset.status_code == 200 and asset.content, url
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "img-src 'self' data:" in csp


def test_docs_assets_come_with_the_install(client):
    js = client.get("/static/docs/swagger-ui-bundle.js")
    assert js.status_code == 200 and "SwaggerUIBundle" in js.text[:2000]
    assert "javascript" in js.headers["content-type"]
    redoc = client.get("/static/docs/redoc.standalone.js")
    assert redoc.status_code == 200 and "Redoc" in redoc.text[:2000]
    css = client.get("/static/docs/swagger-ui.css")
    assert css.status_code == 200 and "text/css" in css.headers["content-type"]
    assert client.get("/static/docs/nothing-here.js").status_code == 404
    assert client.get("/static/docs/../../pyproject.toml").status_code == 404
