"""The hot-path decoders (Bind, Describe, Execute) agree with the strict decoder.

Over well-formed messages (from the encoders), arbitrary bodies and mutated messages, each
hot decoder returns what :func:`decode_frontend` returns, or raises what it raises (the same
ProtocolViolation, message and SQLSTATE): the fast path may never accept what the strict
path refuses, nor decode anything differently.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policyc.proxy.codec import (
    Bind,
    CommandComplete,
    Describe,
    Execute,
    Frame,
    ProtocolViolation,
    decode_backend,
)
from policyc.proxy.codec.frontend import decode_frontend
from policyc.proxy.codec.hot import (
    decode_bind,
    decode_command_complete,
    decode_describe,
    decode_execute,
)

HOT: dict[bytes, Callable[[Frame], object]] = {
    b"B": decode_bind, b"D": decode_describe, b"E": decode_execute}

names = st.text(st.characters(blacklist_characters="\0", blacklist_categories=["Cs"]),
                max_size=8)
values = st.one_of(st.none(), st.binary(max_size=12))
formats = st.lists(st.sampled_from([0, 1]), max_size=3).map(tuple)


@st.composite
def binds(draw: st.DrawFn) -> Bind:
    params = tuple(draw(st.lists(values, max_size=4)))
    shape = draw(st.sampled_from(["none", "one", "each"]))
    param_formats = {"none": (), "one": (draw(st.sampled_from([0, 1])),),
                     "each": tuple(draw(st.sampled_from([0, 1])) for _ in params)}[shape]
    return Bind(draw(names), draw(names), param_formats, params, draw(formats))


messages = st.one_of(
    binds(),
    st.builds(Describe, st.sampled_from(["S", "P"]), names),
    st.builds(Execute, names, st.integers(-(2**31), 2**31 - 1)),
)


def outcome(decode: Callable[[Frame], object], frame: Frame) -> object:
    try:
        return decode(frame)
    except ProtocolViolation as exc:
        return ("violation", exc.message, exc.sqlstate)


def agree(frame: Frame) -> None:
    hot = HOT[frame.type]
    assert outcome(hot, frame) == outcome(decode_frontend, frame)


def framed(type_: bytes, body: bytes) -> Frame:
    return Frame(type_, type_ + struct.pack("!i", len(body) + 4) + body)


@settings(max_examples=400, deadline=None)
@given(messages)
def test_well_formed_messages_decode_the_same(message: Bind | Describe | Execute) -> None:
    raw = message.encode()
    frame = Frame(raw[:1], raw)
    agree(frame)
    assert HOT[frame.type](frame) == message


@settings(max_examples=600, deadline=None)
@given(messages, st.data())
def test_mutated_messages_decode_or_fail_the_same(message: Bind | Describe | Execute,
                                                  data: st.DataObject) -> None:
    body = bytearray(message.encode()[5:])
    for _ in range(data.draw(st.integers(1, 3))):
        choice = data.draw(st.sampled_from(["flip", "cut", "grow", "insert"]))
        if choice == "flip" and body:
            at = data.draw(st.integers(0, len(body) - 1))
            body[at] = data.draw(st.sampled_from([0, 1, 0x50, 0x53, 0x80, 0xFF, 0x7F]))
        elif choice == "cut" and body:
            del body[data.draw(st.integers(0, len(body) - 1)):]
        elif choice == "grow":
            body += data.draw(st.binary(min_size=1, max_size=4))
        else:
            at = data.draw(st.integers(0, len(body)))
            body[at:at] = data.draw(st.binary(min_size=1, max_size=4))
    agree(framed(message.encode()[:1], bytes(body)))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([b"B", b"D", b"E"]), st.binary(max_size=40))
def test_arbitrary_bodies_decode_or_fail_the_same(type_: bytes, body: bytes) -> None:
    agree(framed(type_, body))


@pytest.mark.parametrize("body", [
    b"\0\0" + struct.pack("!Hhh", 2, 0, 2) + struct.pack("!H", 0) + b"\0\0",  # format code 2
    b"\0\0" + struct.pack("!Hhh", 2, 0, 1) + struct.pack("!H", 1) + struct.pack("!i", -1)
    + b"\0\0",  # two formats, one parameter
    b"\0\0\0\0" + struct.pack("!H", 1) + struct.pack("!i", -2) + b"\0\0",  # length -2
    b"\xff\0\0\0\0\0\0\0",  # portal name not UTF-8
    b"\0\0\0\0\0\0\0\0\0",  # a trailing byte
])
def test_malformed_binds_are_refused_as_the_strict_decoder_refuses_them(body: bytes) -> None:
    frame = framed(b"B", body)
    with pytest.raises(ProtocolViolation):
        decode_frontend(frame)
    agree(frame)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=12).map(lambda tag: CommandComplete(tag).encode()[5:]
                                          if "\0" not in tag else b""),
                 st.binary(max_size=16)))
def test_command_complete_decodes_or_fails_as_the_strict_decoder(body: bytes) -> None:
    frame = framed(b"C", body)
    assert outcome(decode_command_complete, frame) == outcome(decode_backend, frame)


def test_an_ordinary_command_complete_takes_the_fast_path() -> None:
    frame = Frame(b"C", CommandComplete("SELECT 1").encode())
    assert decode_command_complete(frame) == CommandComplete("SELECT 1")
