#!/usr/bin/env python3
"""Generates the benchmark workload of scripts/bench (issue #7) into a directory.

Four multi-arch (linux/amd64 + linux/arm64/v8) OCI images bench/app1..4:1.0
that share one base layer per architecture, and bench/big:1.0, one amd64
image with a single large layer. Every layer is a tar of incompressible
(pseudo-random, seeded) files gzipped at level 1, so compression flatters
no one. Writes:

  blobs/sha256/<hex>   every blob, config, manifest and index
  blobs.txt            SET REPO DIGEST SIZE FROM   one line per blob and
                       repository, in push order; FROM is the repository
                       to mount it from, or - to upload it
  manifests.txt        SET REPO REF MEDIATYPE DIGEST   children first,
                       then the tag
  images.txt           SET REPO TAG DIGEST MEDIATYPE
  unique.txt           SET REPO DIGEST SIZE   each distinct blob (layers and
                       configs) once, with a repository that has it
  stamp                the parameters; scripts/bench regenerates when they change
"""
import argparse
import hashlib
import json
import os
import random
import sys
import tarfile
import zlib
from concurrent.futures import ProcessPoolExecutor

MB = 1000 * 1000
MIB = 1024 * 1024
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"

SCALES = {
    # base layer per arch, app layers per image and arch, the big layer
    "full": {"base": 40 * MB, "app": [24 * MB, 5 * MB, 1 * MB], "big": 1024 * MIB},
    "quick": {"base": 4 * MB, "app": [2400 * 1000, 500 * 1000, 100 * 1000], "big": 64 * MIB},
}
ARCHES = [("amd64", None), ("arm64", "v8")]
IMAGES = ["bench/app1", "bench/app2", "bench/app3", "bench/app4"]
FILE_MAX = 8 * MIB  # the largest file inside a layer tar


class Sink:
    """A write-only file object: hashes the tar (diff_id), gzips it at level 1,
    hashes and writes the compressed bytes (digest)."""

    def __init__(self, path):
        self.out = open(path, "wb")
        self.diff = hashlib.sha256()
        self.comp = hashlib.sha256()
        self.size = 0
        self.z = zlib.compressobj(1, zlib.DEFLATED, 31)  # gzip wrapper, mtime 0

    def _emit(self, b):
        if b:
            self.comp.update(b)
            self.out.write(b)
            self.size += len(b)

    def write(self, b):
        self.diff.update(b)
        self._emit(self.z.compress(b))
        return len(b)

    def close(self):
        self._emit(self.z.flush())
        self.out.close()


class RandomReader:
    """`n` pseudo-random bytes, read in pieces (tarfile reads 16 KiB ones)."""

    def __init__(self, rng, n):
        self.rng, self.left = rng, n

    def read(self, n=-1):
        n = self.left if n is None or n < 0 else min(n, self.left)
        self.left -= n
        return self.rng.randbytes(n) if n else b""


def make_layer(args):
    """Writes one gzip layer of about `size` compressed bytes; returns
    (digest, size, diff_id)."""
    tmpdir, name, size, seed = args
    rng = random.Random(seed)
    path = os.path.join(tmpdir, name.replace("/", "_") + ".tmp")
    sink = Sink(path)
    # Content slightly below `size`: random data grows by about 0.03% in gzip.
    content = int(size * 0.9995) - 2048
    with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        d = tarfile.TarInfo(name)
        d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o755, 0
        tar.addfile(d)
        i = 0
        while content > 0:
            n = min(FILE_MAX, content)
            ti = tarfile.TarInfo(f"{name}/file-{i:04d}.bin")
            ti.size, ti.mode, ti.mtime = n, 0o644, 0
            tar.addfile(ti, RandomReader(rng, n))
            content -= n + 512
            i += 1
    sink.close()
    digest = "sha256:" + sink.comp.hexdigest()
    final = os.path.join(tmpdir, digest.split(":")[1])
    os.replace(path, final)
    return digest, sink.size, "sha256:" + sink.diff.hexdigest()


def canon(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--scale", choices=SCALES, default="full")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    a = ap.parse_args()
    sc = SCALES[a.scale]
    blobdir = os.path.join(a.out, "blobs", "sha256")
    os.makedirs(blobdir, exist_ok=True)

    def put(data):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        with open(os.path.join(blobdir, digest[7:]), "wb") as f:
            f.write(data)
        return digest, len(data)

    # Every layer, generated in parallel.
    jobs = {}
    seed = a.seed * 1000
    for arch, _ in ARCHES:
        seed += 1
        jobs[("base", arch)] = (blobdir, f"base-{arch}", sc["base"], seed)
    for img in IMAGES:
        for arch, _ in ARCHES:
            for k, size in enumerate(sc["app"]):
                seed += 1
                jobs[(img, arch, k)] = (blobdir, f"{img.split('/')[1]}-{arch}-{k}", size, seed)
    seed += 1
    jobs[("big",)] = (blobdir, "big", sc["big"], seed)
    keys = list(jobs)
    # The big layer first, so that it overlaps with the many small ones.
    keys.sort(key=lambda k: -jobs[k][2])
    with ProcessPoolExecutor(a.jobs) as ex:
        done = dict(zip(keys, ex.map(make_layer, [jobs[k] for k in keys])))

    blobs, manifests, images, unique = [], [], [], []
    seen = {}

    def blob(set_, repo, digest, size):
        frm = seen.get((set_, digest))
        blobs.append((set_, repo, digest, size, frm or "-"))
        if frm is None:
            seen[(set_, digest)] = repo
            unique.append((set_, repo, digest, size))

    def image_manifest(set_, repo, arch, variant, layers):
        plat = {"architecture": arch, "os": "linux"}
        if variant:
            plat["variant"] = variant
        config = dict(plat)
        config.update({
            "created": "1970-01-01T00:00:00Z",
            "config": {"Cmd": ["/app"], "Env": ["PATH=/usr/bin:/bin"], "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": [l[2] for l in layers]},
            "history": [{"created": "1970-01-01T00:00:00Z", "created_by": f"scripts/bench layer {i}"}
                        for i in range(len(layers))],
        })
        cdig, csize = put(canon(config))
        for l in layers:
            blob(set_, repo, l[0], l[1])
        blob(set_, repo, cdig, csize)
        m = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": cdig, "size": csize},
            "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": l[0], "size": l[1]} for l in layers],
        }
        mdig, msize = put(canon(m))
        return mdig, msize, plat

    for img in IMAGES:
        entries = []
        for arch, variant in ARCHES:
            layers = [done[("base", arch)]] + [done[(img, arch, k)] for k in range(len(sc["app"]))]
            mdig, msize, plat = image_manifest("main", img, arch, variant, layers)
            manifests.append(("main", img, mdig, OCI_MANIFEST, mdig))
            entries.append({"mediaType": OCI_MANIFEST, "digest": mdig, "size": msize, "platform": plat})
        idx = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
        idig, _ = put(canon(idx))
        manifests.append(("main", img, "1.0", OCI_INDEX, idig))
        images.append(("main", img, "1.0", idig, OCI_INDEX))

    mdig, _, _ = image_manifest("big", "bench/big", "amd64", None, [done[("big",)]])
    manifests.append(("big", "bench/big", "1.0", OCI_MANIFEST, mdig))
    images.append(("big", "bench/big", "1.0", mdig, OCI_MANIFEST))

    def write(name, rows):
        with open(os.path.join(a.out, name), "w") as f:
            for r in rows:
                f.write(" ".join(str(x) for x in r) + "\n")

    write("blobs.txt", blobs)
    write("manifests.txt", manifests)
    write("images.txt", images)
    write("unique.txt", unique)
    for s in ("main", "big"):
        n = sum(1 for u in unique if u[0] == s)
        b = sum(u[3] for u in unique if u[0] == s)
        print(f"workload {s}: {n} unique blobs, {b} bytes", file=sys.stderr)
    with open(os.path.join(a.out, "stamp"), "w") as f:
        f.write(f"scale={a.scale} seed={a.seed} version=1\n")


if __name__ == "__main__":
    main()
