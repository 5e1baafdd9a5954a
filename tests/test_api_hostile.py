"""Hostile requests to every API route, generated (hypothesis): whatever the body, the path and
the query string, the API Lambda answers a JSON 2xx or 4xx, never a 5xx and never an exception,
and nothing in an answer names an S3 key, a URL or a record outside the caller's namespace.

The handler runs as in tests/test_api_requests.py: the real ``lambdas.api.handler`` on API
Gateway-shaped events, a real PostgreSQL schema, real Redis, moto S3. Before the run, each test
seeds the caller (user-a) and another user (user-b) with uploads (single and multipart) and jobs
(queued, completed with outputs, failed), and pipelines (a processed upload with its finalize
job, a failed one whose result key names the other user's prefix), so that generated ids hit
real rows: the caller's own, the other user's (which must look absent), and ids that only look
like ids.

How many examples: ``tests/support/hypothesis_profiles.py`` (``OFFLOAD_HYPOTHESIS_EXAMPLES``
CI sets 2,000; docs/testing.md). Examples are derived from each test's name (derandomized),
so a CI failure replays the same way on a developer's machine.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

from offload.db.uploads import revision_sql
from offload.jobs import JobRef
from offload.keys import KEY_SEGMENT_ID
from offload.queue import producer
from offload.uploads import UPLOAD_STATES, MiB
from tests.support.apigw import LambdaContext, call, configure, decode, event
from tests.support.hypothesis_profiles import api_settings, examples

CALLER = "user-a"
OTHER = "user-b"
GOOD = {"filename": "photo.jpg", "size": 1234, "contentType": "image/jpeg"}


# --- the seeded world -------------------------------------------------------------------------


@dataclass
class World:
    bucket: str
    uploads: dict[str, list[str]]  # owner -> upload ids
    jobs: dict[str, list[str]]  # owner -> job ids
    foreign_filenames: list[str]

    def ids(self, owner: str) -> list[str]:
        return self.uploads[owner] + self.jobs[owner]


def _sql(settings: Any, statement: str, params: Any = ()) -> None:
    with psycopg.connect(
        settings.database_url,
        options=f"-c search_path={settings.database_schema}",
        autocommit=True,
    ) as conn:
        conn.execute(statement, params)


async def _enqueue(settings: Any, refs: list[JobRef]) -> list[str]:
    async with producer(settings) as made:
        return [await made.enqueue("noop", ref) for ref in refs]


def seed(settings: Any, bucket: str, monkeypatch: Any) -> World:
    """Two uploads (one single, one multipart) and three jobs (queued, completed with output
    keys, failed) for each user; the other user's file names are secret-looking, so that an
    answer leaking them is caught."""
    configure(monkeypatch, OFFLOAD_SINGLE_UPLOAD_MAX_BYTES=5 * MiB)
    uploads: dict[str, list[str]] = {}
    jobs: dict[str, list[str]] = {}
    names = {CALLER: "mine", OTHER: "foreign-secret"}
    for owner in (CALLER, OTHER):
        single = call(
            "POST", "/uploads", sub=owner, body=GOOD | {"filename": f"{names[owner]}.jpg"}
        )
        multi = call(
            "POST",
            "/uploads",
            sub=owner,
            body=GOOD | {"filename": f"{names[owner]}-big.jpg", "size": 12 * MiB},
        )
        assert single.status == multi.status == 201, (single.body, multi.body)
        uploads[owner] = [single.body["id"], multi.body["id"]]
        refs = [
            JobRef(
                bucket=bucket,
                key=f"uploads/{owner}/{upload_id}/{names[owner]}.jpg",
                etag=f'"{n:032x}"',
                owner=owner,
                upload_id=upload_id,
            )
            for n, upload_id in enumerate([*uploads[owner], uploads[owner][0]])
        ]
        queued, completed, failed = asyncio.run(_enqueue(settings, refs))
        upload_id = refs[1].upload_id
        result = {
            "thumbnail_key": f"processed/{owner}/{upload_id}/thumb.jpg",
            # A processor that wrote someone else's key: never signed, never a link.
            "stolen_key": f"processed/{OTHER if owner == CALLER else CALLER}/x/thumb.jpg",
        }
        _sql(
            settings,
            "UPDATE jobs SET state = 'completed', attempt = 1, result = %s, finished_at = now(),"
            f" revision = (SELECT {revision_sql('u')} FROM uploads u WHERE u.id = jobs.upload_id)"
            " WHERE id = %s",
            (Jsonb(result), completed),
        )
        _sql(
            settings,
            "UPDATE jobs SET state = 'failed', attempt = 1, error_message = 'not an image',"
            " error_stack = 'Traceback: secret', finished_at = now() WHERE id = %s",
            (failed,),
        )
        # Pipelines (issue 14): the single upload processed, its queued job a step of its
        # finalize job; the multipart upload failed, naming a result key of the other user's
        # (a bug in finalize: never signed, never shown).
        single, multi = uploads[owner]
        other = OTHER if owner == CALLER else CALLER
        finalize = f"finalize-{single}"
        _sql(
            settings,
            "INSERT INTO jobs (id, name, queue, upload_id, owner, bucket, key, revision, state,"
            " attempt) SELECT %s, 'finalize', 'offload', id, owner, bucket, key,"
            f" {revision_sql('u')}, 'completed', 1 FROM uploads u WHERE id = %s",
            (finalize, single),
        )
        _sql(settings, "UPDATE jobs SET parent_id = %s WHERE id = %s", (finalize, queued))
        _sql(
            settings,
            "UPDATE uploads SET state = 'processed', result_key = %s, finished_at = now()"
            " WHERE id = %s",
            (f"processed/{owner}/{single}/result.json", single),
        )
        _sql(
            settings,
            "UPDATE uploads SET state = 'failed', failed_step = 'inspect', error = 'not an image',"
            " result_key = %s, finished_at = now() WHERE id = %s",
            (f"processed/{other}/{multi}/result.json", multi),
        )
        jobs[owner] = [queued, completed, failed, finalize]
    return World(bucket, uploads, jobs, [f"{names[OTHER]}.jpg", f"{names[OTHER]}-big.jpg"])


@pytest.fixture
def world(lambda_env: Any, settings: Any, bucket: str, monkeypatch: Any) -> World:
    return seed(settings, bucket, monkeypatch)


# --- what an answer may contain -----------------------------------------------------------------


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _key_of_url(url: str, bucket: str) -> str | None:
    """The S3 key a URL names (path-style or virtual-hosted), None when it names the bucket
    only (a presigned POST's URL)."""
    parts = urlsplit(url)
    path = unquote(parts.path).lstrip("/")
    if parts.hostname and parts.hostname.startswith(bucket + "."):
        return path or None
    assert path == bucket or path.startswith(bucket + "/"), url
    return path[len(bucket) + 1 :] or None


def assert_within_namespace(answer: Any, world: World) -> None:
    """Every key and every URL in the answer lies under the caller's prefixes, and nothing of
    the other user's (ids, file names) appears."""
    allowed = (f"uploads/{CALLER}/", f"processed/{CALLER}/")
    text = json.dumps(answer.body)
    for secret in (*world.ids(OTHER), *world.foreign_filenames, OTHER):
        assert secret not in text, (secret, answer.body)
    for value in _strings(answer.body):
        if value.startswith(("http://", "https://")):
            key = _key_of_url(value, world.bucket)
            assert key is None or key.startswith(allowed), (value, answer.body)
        elif value.startswith(("uploads/", "processed/")):
            assert value.startswith(allowed), (value, answer.body)


def check(raw: dict[str, Any], world: World) -> None:
    answer = decode(raw)
    assert answer.status < 500, (answer.status, answer.body)
    assert answer.headers.get("content-type") == "application/json", answer.headers
    if answer.status >= 400:
        assert isinstance(answer.body, dict) and set(answer.body) <= {"message", "field"}
        assert isinstance(answer.body["message"], str) and answer.body["message"]
        assert world.bucket not in answer.body["message"]
    assert_within_namespace(answer, world)


def run(world: World, method: str, path: str, **kwargs: Any) -> None:
    """One request through the real handler: it must not raise, and its answer must pass
    :func:`check`."""
    from lambdas import api

    binary = kwargs.pop("binary", None)
    request = event(method, path, **kwargs)
    if binary is not None:
        request["body"], request["isBase64Encoded"] = base64.b64encode(binary).decode(), True
    check(api.handler(request, LambdaContext("offload-api", 29.0)), world)


# --- strategies ---------------------------------------------------------------------------------

# Text as JSON can carry it: any code point, lone surrogates included (a "\ud800" escape).
ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)
HUGE_INTS = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**1000), max_value=2**1000),
    st.sampled_from([0, -1, 1, 2**31, 2**63, 2**64, 5 * 1024**4 + 1]),
    st.builds(pow, st.just(10), st.just(4000)),  # near the int-to-str digit limit (4300)
)
FLOATS = st.floats(allow_nan=True, allow_infinity=True)
ID_LIKE = st.from_regex(KEY_SEGMENT_ID, fullmatch=True)
SCALARS = st.one_of(st.none(), st.booleans(), HUGE_INTS, FLOATS, ANY_TEXT, ID_LIKE)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(ANY_TEXT, inner, max_size=5)
    ),
    max_leaves=20,
)
CONTENT_TYPES = st.one_of(
    st.sampled_from(
        ["image/jpeg", "IMAGE/PNG", "text/plain; charset=utf-8", "image/*", "*/*", "a/b" * 200]
    ),
    ANY_TEXT,
)
PART = st.fixed_dictionaries(
    {}, optional={"partNumber": st.one_of(st.integers(-2, 10_002), JSON), "etag": JSON}
)
# Bodies shaped like the real ones, with any value in any field: past the first type check.
SHAPED = st.fixed_dictionaries(
    {},
    optional={
        "filename": st.one_of(ANY_TEXT, st.sampled_from(["../../x", "a/../b", "\x00", "."]), JSON),
        "size": st.one_of(st.integers(-2, 20 * MiB), HUGE_INTS, JSON),
        "contentType": st.one_of(CONTENT_TYPES, JSON),
        "partNumbers": st.one_of(st.lists(st.integers(-2, 10_002), max_size=12), JSON),
        "parts": st.one_of(st.lists(PART, max_size=5), JSON),
    },
)
DEEP = st.integers(1, 200_000).flatmap(
    lambda depth: st.sampled_from(["[" * depth + "]" * depth, '{"a":' * depth + "1" + "}" * depth])
)


@st.composite
def bodies(draw: st.DrawFn) -> dict[str, Any]:
    """``event()`` keyword arguments for a body: JSON of any shape, text that is not JSON,
    deep nesting, huge digit strings, NULs, none at all, sometimes base64-encoded; or any
    bytes (``binary``: base64-encoded by :func:`run`)."""
    kind = draw(st.sampled_from(["shaped", "json", "raw", "deep", "bytes", "none"]))
    if kind == "none":
        return {}
    if kind == "bytes":  # any bytes, base64-encoded by API Gateway: not always UTF-8
        return {"binary": draw(st.binary(max_size=64))}
    if kind == "shaped":
        raw = json.dumps(draw(SHAPED))
    elif kind == "json":
        raw = json.dumps(draw(JSON))
    elif kind == "deep":
        raw = draw(DEEP)
    else:
        raw = draw(
            st.one_of(
                ANY_TEXT.map(
                    lambda t: t.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
                ),
                st.sampled_from(['{"size": ' + "9" * 5000 + "}", '{"a": "\x00"}', "\x00", " "]),
            )
        )
    encoded = draw(st.booleans())
    return {"raw_body": raw, "base64_body": encoded}


# Path segments: plain text (no surrogates: a path is UTF-8), %-encodings, traversal.
PATH_TEXT = st.text(st.characters(codec="utf-8"), max_size=30)
TRAVERSAL = st.sampled_from(
    ["..", ".", "%2e%2e", "..%2f..%2fuser-b", "%00", "a%2Fb", "../uploads", "%252e", "~", " "]
)


def ids(world: World) -> st.SearchStrategy[str]:
    """Real ids (the caller's and the other user's), id-shaped strings, odd text, and real ids
    with something appended or encoded."""
    real = st.sampled_from(world.ids(CALLER) + world.ids(OTHER))
    return st.one_of(
        real,
        real,
        ID_LIKE,
        PATH_TEXT,
        TRAVERSAL,
        st.tuples(real, st.sampled_from(["\n", "%00", "/..", "/../x", "%0a", " ", "."])).map(
            "".join
        ),
        real.map(lambda value: value.upper()),
    )


def queries(world: World) -> st.SearchStrategy[dict[str, str] | None]:
    """``limit``, ``cursor`` (real cursors of another user's jobs included), ``state``,
    ``uploadId`` (real ids of both users included) and ``name`` of any kind, and other
    parameters."""
    cursor_json = JSON.map(lambda value: json.dumps(value).encode())
    cursors = st.one_of(
        cursor_json.map(lambda raw: base64.urlsafe_b64encode(raw).decode().rstrip("=")),
        st.fixed_dictionaries(
            {
                "t": st.one_of(HUGE_INTS, FLOATS, JSON),
                "i": st.one_of(st.sampled_from(world.ids(OTHER)), JSON),
            }
        ).map(lambda value: base64.urlsafe_b64encode(json.dumps(value).encode()).decode()),
        PATH_TEXT,
    )
    limits = st.one_of(st.integers(-5, 1_000).map(str), PATH_TEXT, st.just("9" * 5000))
    states = st.one_of(st.sampled_from([*UPLOAD_STATES, "PROCESSED", "done"]), PATH_TEXT)
    names = st.one_of(
        st.sampled_from(["export", "inspect", "finalize", "EXPORT", "a" * 65, "x'--"]), PATH_TEXT
    )
    named = st.fixed_dictionaries(
        {},
        optional={
            "limit": limits,
            "cursor": cursors,
            "state": states,
            "uploadId": ids(world),
            "name": names,
        },
    )
    other = st.dictionaries(PATH_TEXT, PATH_TEXT, max_size=3)
    return st.one_of(st.none(), named, st.tuples(named, other).map(lambda t: t[1] | t[0]))


# --- the properties -----------------------------------------------------------------------------

# The suite's 300 s per test holds the default run many times over; a long run gets a quarter
# of a second an example (the upload routes took 0.12 s an example on the loaded machine).
LONG = pytest.mark.timeout(max(300, examples() // 4))

# (method, path template): every route of lambdas/api.py; "{id}" is drawn from ids().
ROUTES = [
    ("POST", "/uploads"),
    ("GET", "/uploads"),
    ("GET", "/uploads/{id}"),
    ("POST", "/uploads/{id}/parts"),
    ("POST", "/uploads/{id}/complete"),
    ("DELETE", "/uploads/{id}"),
    ("GET", "/jobs"),
    ("POST", "/jobs"),
    ("GET", "/jobs/{id}"),
    ("POST", "/jobs/{id}/retry"),
]


@pytest.mark.slow
@LONG
@pytest.mark.parametrize(("method", "template"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
@api_settings
@given(data=st.data())
def test_hostile_requests_get_a_json_answer_below_500_within_the_callers_namespace(
    world: World, method: str, template: str, data: st.DataObject
) -> None:
    path = template.replace("{id}", data.draw(ids(world), label="id"))
    body = data.draw(bodies(), label="body")
    query = data.draw(queries(world), label="query")
    run(world, method, path, query=query, **body)


@pytest.mark.slow
@LONG
@api_settings
@given(data=st.data())
def test_any_method_and_path_gets_a_json_answer_below_500(
    world: World, data: st.DataObject
) -> None:
    """Paths outside the routes (and odd methods on real ones) get a JSON 404, not a 5xx."""
    method = data.draw(st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]))
    segments = st.one_of(
        st.sampled_from(["uploads", "jobs", "parts", "complete", "retry", ""]),
        ids(world),
    )
    path = "/" + "/".join(data.draw(st.lists(segments, max_size=5), label="path"))
    run(world, method, path, query=data.draw(queries(world)), **data.draw(bodies()))


# --- what the property found, kept as explicit regressions ---------------------------------------


def test_a_result_naming_another_users_key_shows_it_to_no_one(world: World) -> None:
    """Found by the property: a completed job's ``result`` was shown as the processor wrote it,
    so a processor that named a key outside its upload's prefix (the seeded ``stolen_key``)
    showed it to the caller. Such keys are dropped from the answer (never signed either)."""
    completed = world.jobs[CALLER][1]
    for answer in (call("GET", f"/jobs/{completed}"), call("GET", "/jobs")):
        assert answer.status == 200
        assert_within_namespace(answer, world)
    result = call("GET", f"/jobs/{completed}").body["result"]
    assert set(result) == {"thumbnail_key"}
    assert result["thumbnail_key"].startswith(f"processed/{CALLER}/")


def test_an_upload_whose_result_key_names_another_users_prefix_links_nothing(
    world: World,
) -> None:
    """The seeded failed upload names a result key under the other user's prefix (a bug in
    finalize): neither its answer nor the list signs or shows it; the processed upload's own
    result.json is linked."""
    single, multi = world.uploads[CALLER]
    for answer in (call("GET", f"/uploads/{multi}"), call("GET", "/uploads")):
        assert answer.status == 200
        assert_within_namespace(answer, world)
    assert call("GET", f"/uploads/{multi}").body["links"] == []
    linked = call("GET", f"/uploads/{single}").body
    assert [link["name"] for link in linked["links"]] == ["result.json"]
    assert linked["pipeline"]["finalize"]["id"] == f"finalize-{single}"
