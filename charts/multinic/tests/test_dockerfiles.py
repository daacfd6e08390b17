"""The Dockerfiles' shape: a plain `docker build` builds the release stage
from source (any platform, cross-compiled), and the `prebuilt` target the
tests build is the same image with a binary from elsewhere. The release
stage itself needs a Rust base image from a registry, which the test machine
does not have; test_images.py checks what both targets share."""

from __future__ import annotations

import re

import pytest

from chart import REPO

NAMES = ["controller", "agent"]


def stages(name: str) -> list[tuple[str, str]]:
    """(base, stage name) of each FROM, in order."""
    text = (REPO / f"Dockerfile.{name}").read_text()
    return re.findall(r"^FROM\s+(?:--platform=\S+\s+)?(\S+)\s+AS\s+(\S+)", text, re.M)


@pytest.mark.parametrize("name", NAMES)
def test_default_target_is_the_release_build(name):
    text = (REPO / f"Dockerfile.{name}").read_text()
    assert stages(name) == [("${RUST_IMAGE}", "build"), ("scratch", "runtime"), ("runtime", "prebuilt"),
                            ("runtime", "release")], "release must stay the last (default) stage"
    assert re.search(r"^FROM --platform=\$BUILDPLATFORM \$\{RUST_IMAGE\} AS build", text, re.M), "build on the build platform"
    assert "ARG TARGETARCH" in text and "aarch64-unknown-linux-gnu" in text and "x86_64-unknown-linux-gnu" in text
    assert "RUSTFLAGS='-C target-feature=+crt-static'" in text
    assert f"cargo build --release --locked --target \"$triple\" -p multinic-{name}" in text
    assert f"COPY --from=build --chmod=0555 /out/multinic-{name} /usr/local/bin/multinic-{name}" in text
    assert f"COPY --chmod=0555 multinic-{name} /usr/local/bin/multinic-{name}" in text
    for label in ["title", "source", "version", "revision", "licenses"]:
        assert f"org.opencontainers.image.{label}=" in text


def test_the_two_dockerfiles_differ_only_where_the_binaries_do():
    controller = (REPO / "Dockerfile.controller").read_text()
    agent = (REPO / "Dockerfile.agent").read_text()

    def body(text: str, name: str) -> list[str]:
        lines = [l for l in text.splitlines() if l and not l.startswith("#")]
        return [l.replace(f"multinic-{name}", "multinic-X").replace(f"Dockerfile.{name}", "Dockerfile.X")
                for l in lines if "description=" not in l and not l.startswith(("USER", "EXPOSE"))]

    assert body(controller, "controller") == body(agent, "agent")
    assert "USER 65532:65532" in controller and "USER 0:0" in agent


def test_release_build_context_leaves_out_build_output():
    ignored = (REPO / ".dockerignore").read_text().split()
    assert "target/" in ignored and ".venv/" in ignored and ".git/" in ignored
