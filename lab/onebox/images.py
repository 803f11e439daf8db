"""The cluster's images, built here from the binaries lab.onebox.build made.

    python -m lab.onebox.images --cache /var/cache/igw-onebox --modules onebox/modules

kubeadm names the images it will run (`kubeadm config images list` for the pinned
version); each is built under exactly that name with buildah and written as a
docker-archive into <cache>/images/, which every node imports into containerd's
`k8s.io` namespace. Nothing is pulled: the control plane, etcd and CoreDNS are their
static binaries on an empty base; kube-proxy's base is a small Debian with iptables
and conntrack (it runs both); pause is compiled from Kubernetes' own pause.c.

An archive's name carries a digest of everything it is made from, so a new pin gives
a new archive and an unchanged one is not built again. Prints one JSON object:
image name -> archive path.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .build import built_dir
from .pins import Pin, PinError, read_pins

#: Debian packages of kube-proxy's base (its iptables mode runs iptables-restore and
#: conntrack); Debian's iptables uses the nf_tables backend, as the nodes do.
PROXY_BASE_PACKAGES = ("iptables", "conntrack", "ca-certificates")
PROXY_BASE_SUITE = "bookworm"


class ImageError(RuntimeError):
    """An image that could not be made; the message names it and the step."""


@dataclass(frozen=True)
class ImageSpec:
    name: str
    files: tuple[tuple[Path, str], ...]
    entrypoint: tuple[str, ...] = ()
    env: tuple[str, ...] = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)
    base: Path | None = None  # a root filesystem tarball, or None for an empty base
    links: tuple[tuple[str, str], ...] = ()  # (path in the image, what it points at)

    def digest(self) -> str:
        h = hashlib.sha256()
        h.update(json.dumps([self.name, self.entrypoint, self.env, self.links]).encode())
        for src, dst in self.files:
            h.update(dst.encode())
            h.update(file_digest(src).encode())
        if self.base is not None:
            h.update(file_digest(self.base).encode())
        return h.hexdigest()[:12]

    def archive(self, cache: Path) -> Path:
        safe = self.name.replace("/", "_").replace(":", "_")
        return cache / "images" / f"{safe}-{self.digest()}.tar"


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def image_for(ref: str) -> str:
    """The image's short name: registry.k8s.io/coredns/coredns:v1.12.1 -> coredns."""
    return ref.rsplit("/", 1)[-1].split(":", 1)[0]


def tag_of(ref: str) -> str:
    return ref.rsplit(":", 1)[-1]


def check_tags(refs: list[str], pins: dict[str, Pin]) -> None:
    """kubeadm's etcd and CoreDNS tags must be the versions the modules pin."""
    for ref in refs:
        short, tag = image_for(ref), tag_of(ref)
        if short == "etcd" and not tag.startswith(pins["etcd"].version.removeprefix("v") + "-"):
            raise ImageError(
                f"kubeadm asks for {ref}; onebox/modules/etcd pins {pins['etcd'].version}"
            )
        if short == "coredns" and tag != pins["coredns"].version:
            raise ImageError(
                f"kubeadm asks for {ref}; onebox/modules/coredns pins {pins['coredns'].version}"
            )


def kubeadm_images(kubeadm: Path, version: str) -> list[str]:
    out = subprocess.run(
        [str(kubeadm), "config", "images", "list", f"--kubernetes-version={version}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


def specs(refs: list[str], bins: dict[str, Path], pause: Path, proxy_base: Path) -> list[ImageSpec]:
    """One spec per image kubeadm named; an image we cannot make is an error."""
    k8s, etcd, coredns = bins["kubernetes"], bins["etcd"], bins["coredns"]
    made: list[ImageSpec] = []
    for ref in refs:
        short = image_for(ref)
        if short in ("kube-apiserver", "kube-controller-manager", "kube-scheduler"):
            made.append(ImageSpec(ref, ((k8s / short, f"/usr/local/bin/{short}"),)))
        elif short == "kube-proxy":
            made.append(
                ImageSpec(ref, ((k8s / short, "/usr/local/bin/kube-proxy"),), base=proxy_base)
            )
        elif short == "etcd":
            files = (
                (etcd / "etcd", "/usr/local/bin/etcd"),
                (etcd / "etcdctl", "/usr/local/bin/etcdctl"),
            )
            made.append(ImageSpec(ref, files))
        elif short == "coredns":
            made.append(
                ImageSpec(ref, ((coredns / "coredns", "/coredns"),), entrypoint=("/coredns",))
            )
        elif short == "pause":
            made.append(ImageSpec(ref, ((pause, "/pause"),), entrypoint=("/pause",)))
        else:
            raise ImageError(f"kubeadm asks for {ref}: onebox does not know how to build it")
    return made


#: Images the tests run beside kubeadm's: agnhost, Kubernetes' own test server, under
#: the name and tag its e2e suite uses (test/images/agnhost/VERSION of the same
#: module); and Debian's static busybox, for shells, sleeps and traps in test pods.
BUSYBOX = Path("/bin/busybox")
BUSYBOX_APPLETS = ("sh", "sleep", "true", "date", "echo", "cat", "kill", "ls", "wget", "nc")
BUSYBOX_IMAGE = "onebox.invalid/busybox:debian"


def agnhost_ref(k8s_source: Path) -> str:
    version = (k8s_source / "test" / "images" / "agnhost" / "VERSION").read_text().strip()
    return f"registry.k8s.io/e2e-test-images/agnhost:{version}"


def test_specs(k8s_bin: Path, k8s_source: Path) -> list[ImageSpec]:
    if not BUSYBOX.is_file():
        raise ImageError(
            f"image={BUSYBOX_IMAGE} step=source: {BUSYBOX} missing (apt install busybox-static)"
        )
    return [
        ImageSpec(
            agnhost_ref(k8s_source),
            ((k8s_bin / "agnhost", "/agnhost"),),
            entrypoint=("/agnhost",),
        ),
        ImageSpec(
            BUSYBOX_IMAGE,
            ((BUSYBOX, "/bin/busybox"),),
            links=tuple((f"/bin/{a}", "busybox") for a in BUSYBOX_APPLETS),
        ),
    ]


def run(step: str, name: str, argv: list[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ImageError(
            f"image={name} step={step} rc={proc.returncode}: {proc.stderr.strip()[-800:]}"
        )
    return proc.stdout.strip()


def build_image(spec: ImageSpec, cache: Path, log: Callable[[str], None]) -> Path:
    archive = spec.archive(cache)
    if archive.is_file():
        return archive
    archive.parent.mkdir(parents=True, exist_ok=True)
    log(f"image={spec.name} step=build")
    ctr = run("from", spec.name, ["buildah", "from", "scratch"])
    try:
        if spec.base is not None:
            run("base", spec.name, ["buildah", "add", ctr, str(spec.base), "/"])
        for src, dst in spec.files:
            run("copy", spec.name, ["buildah", "copy", "--chmod", "0755", ctr, str(src), dst])
        if spec.links:
            mnt = Path(run("mount", spec.name, ["buildah", "mount", ctr]))
            try:
                for link, target in spec.links:
                    (mnt / link.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
                    (mnt / link.lstrip("/")).symlink_to(target)
            finally:
                run("umount", spec.name, ["buildah", "umount", ctr])
        config = ["buildah", "config"]
        for e in spec.env:
            config += ["--env", e]
        if spec.entrypoint:
            config += ["--entrypoint", json.dumps(list(spec.entrypoint))]
        run("config", spec.name, [*config, ctr])
        image_id = run("commit", spec.name, ["buildah", "commit", "--quiet", ctr, spec.name])
    finally:
        subprocess.run(["buildah", "rm", ctr], capture_output=True)
    partial = archive.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    run(
        "push",
        spec.name,
        ["buildah", "push", "--quiet", image_id, f"docker-archive:{partial}:{spec.name}"],
    )
    partial.rename(archive)
    log(f"image={spec.name} step=built archive={archive.name}")
    return archive


def module_source(pins: dict[str, Pin], cache: Path) -> Path:
    """The pinned Kubernetes module's files, as the Go build downloaded them."""
    return cache / "gomod" / f"{pins['kubernetes'].module}@{pins['kubernetes'].version}"


def build_pause(pins: dict[str, Pin], cache: Path, tag: str) -> Path:
    """Kubernetes' pause.c, compiled static as its own Makefile does."""
    source = module_source(pins, cache) / "build" / "pause" / "linux" / "pause.c"
    out = cache / "bin" / f"pause-{tag}" / "pause"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    if not source.is_file():
        raise ImageError(f"image=pause step=source: {source} missing (build kubernetes first)")
    partial = out.with_suffix(".partial")
    run(
        "compile",
        "pause",
        ["cc", "-Os", "-Wall", "-static", f"-DVERSION=v{tag}", "-o", str(partial), str(source)],
    )
    partial.rename(out)
    return out


def build_proxy_base(cache: Path) -> Path:
    digest = hashlib.sha256(
        json.dumps([PROXY_BASE_SUITE, PROXY_BASE_PACKAGES]).encode()
    ).hexdigest()[:12]
    out = cache / "rootfs" / f"kube-proxy-base-{digest}.tar"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        partial = Path(tmp) / "base.tar"
        run(
            "base",
            "kube-proxy",
            [
                "mmdebstrap",
                "--quiet",
                "--variant=minbase",
                f"--include={','.join(PROXY_BASE_PACKAGES)}",
                PROXY_BASE_SUITE,
                str(partial),
            ],
        )
        partial.rename(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modules", type=Path, required=True)
    parser.add_argument("--cache", type=Path, required=True)
    args = parser.parse_args(argv)

    def log(msg: str) -> None:
        print(f"onebox-images {msg}", file=sys.stderr, flush=True)

    try:
        pins = read_pins(args.modules)
        bins = {c: built_dir(args.cache, p) for c, p in pins.items()}
        for component in ("kubernetes", "etcd", "coredns"):
            if not (bins[component] / "build.json").is_file():
                raise ImageError(f"component={component} is not built ({bins[component]})")
        refs = kubeadm_images(bins["kubernetes"] / "kubeadm", pins["kubernetes"].version)
        check_tags(refs, pins)
        pause_tag = next(tag_of(r) for r in refs if image_for(r) == "pause")
        pause = build_pause(pins, args.cache, pause_tag)
        proxy_base = build_proxy_base(args.cache)
        wanted = specs(refs, bins, pause, proxy_base)
        wanted += test_specs(bins["kubernetes"], module_source(pins, args.cache))
        archives = {s.name: str(build_image(s, args.cache, log)) for s in wanted}
    except (PinError, ImageError, subprocess.CalledProcessError) as e:
        print(f"onebox images: {e}", file=sys.stderr)
        return 1
    print(json.dumps(archives))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
