"""The handlers' tracing wrapper: X-Ray only when tracing is on, built on first use."""

from __future__ import annotations

from lambdas import tracing


def test_tracer_wraps_handlers_only_when_tracing_is_on(monkeypatch):
    calls = []

    def fn(event, context):
        calls.append(event)
        return {"seen": event}

    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    monkeypatch.setattr(tracing, "_tracer", None)
    plain = tracing.traced(fn)
    assert plain({"a": 1}, None) == {"seen": {"a": 1}}
    assert tracing.current_tracer() is None  # no X-Ray SDK built while tracing is off

    monkeypatch.delenv("POWERTOOLS_TRACE_DISABLED")
    wrapped = tracing.traced(fn)  # X-Ray SDK loaded here (it disables itself outside Lambda)
    assert wrapped({"b": 2}, None) == {"seen": {"b": 2}}
    assert tracing.current_tracer() is not None
    assert calls == [{"a": 1}, {"b": 2}]
