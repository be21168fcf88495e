"""The HLS ladder: 1080p / 720p / 480p renditions from one decode, a master playlist measured
from what was written, and a poster.

One ffmpeg process decodes the source once; its filter graph converts it to constant frame
rate starting at t=0 (`fps=...:start_time=0`, so every rung has the same frames at the same
timestamps), then scales in a cascade (source -> top -> 720p -> 480p, each from the next larger
rung: the cheapest path) and `split`s to one libx264 encoder and one HLS muxer per rung. Every
encoder forces a keyframe at each multiple of the segment duration (`-force_key_frames
expr:gte(t,n_forced*6)`), and the HLS muxer cuts at the first keyframe at or after each
multiple, i.e. exactly there, in every rung: segment boundaries are aligned across rungs (the
scene-cut keyframes x264 adds inside segments differ by rung and do not matter). The one audio
rendition (AAC-LC mono, the MP4's) is encoded by a second ffmpeg process in parallel, as the MP4
path does.

The rung the size of the MP4 (720p, or the source's size when smaller) is encoded with the
MP4's own settings (`profile.py`), and the MP4 is a copy of that rung's stream muxed with the
audio rendition (`+faststart`): the 720p rung costs nothing over the MP4. When the MP4 is a
remux of an already compliant input, it stays that and every rung is encoded.

Segments are fragmented MP4 (CMAF-style: `ftyp`+`moov` init, then `moof`+`mdat` fragments),
not MPEG-TS, because (1) the rung file *is* an MP4 the MP4 output can be copied from, and
the audio rendition too; (2) TS costs 188-byte packets with PES headers and PAT/PMT per
segment, ~5-10 % at these low lecture bitrates (60-300 kbit/s), fMP4 under 1 %; (3) hls.js
feeds fMP4 to Media Source Extensions without transmuxing in JavaScript (less CPU on a
student's phone), Safari/iOS play it natively (HLS version 7), and the same segments can serve
DASH later. Each rendition is one file with byte-range segments (`profile.HLS_SINGLE_FILE`).

The master playlist is written by us, not ffmpeg, from measurements of the written files:
BANDWIDTH is the peak bit rate over any run of segments lasting 0.5-1.5x the target duration
(RFC 8216's definition) of the video plus that of the audio, AVERAGE-BANDWIDTH the total bytes
over the total duration, CODECS from the `avcC` and `esds` boxes actually written (profile,
constraint flags, level; audio object type), RESOLUTION and FRAME-RATE from ffprobe of the rung.

ffmpeg only gets argument lists built here and paths in our private temp dir."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
from fractions import Fraction
from pathlib import Path

from lectern_transcoder import encode, ffsafe, loudness, profile
from lectern_transcoder.errors import TranscodeError, UnusableInput
from lectern_transcoder.probe import AudioStream, Probe

MASTER = "master.m3u8"
AUDIO = "audio"
POSTER = "poster.jpg"
CONTENT_TYPES = {".m3u8": "application/vnd.apple.mpegurl", ".mp4": "video/mp4", ".m4s": "video/iso.segment",
                 ".jpg": "image/jpeg"}


@dataclasses.dataclass(frozen=True)
class Rung:
    name: str  # "1080p", "720p", "480p": the short side
    width: int
    height: int
    kind: str  # "top", "mp4" or "low": its settings in profile.HLS_RUNG_SETTINGS
    shared: bool  # its stream is also the MP4's video

    @property
    def settings(self) -> dict:
        return profile.HLS_RUNG_SETTINGS[self.kind]


@dataclasses.dataclass(frozen=True)
class LadderPlan:
    rungs: tuple[Rung, ...]
    fps: Fraction
    gop: int
    threads: int
    segment_seconds: int
    audio: AudioStream | None
    copy_audio: bool

    @property
    def shared(self) -> Rung | None:
        return next((r for r in self.rungs if r.shared), None)


def _short(size: tuple[int, int]) -> int:
    return min(size)


def rung_size(width: int, height: int, short: int) -> tuple[int, int]:
    """Fit in the 16:9 box of that short side (1920x1080, 854x480; transposed for portrait),
    never upscaled, aspect kept, sides rounded to the nearest even number (854x480, not 852x478)."""
    long_side = 2 * round(short * 16 / 9 / 2)
    bw, bh = (long_side, short) if width >= height else (short, long_side)
    scale = min(1.0, bw / width, bh / height)
    return (max(2, min(bw, 2 * round(width * scale / 2))), max(2, min(bh, 2 * round(height * scale / 2))))


def plan_ladder(p: Probe, mp4: encode.Plan) -> LadderPlan:
    """Which rungs for this input: never larger than the source, aspect kept (portrait too:
    the short side names the rung), the MP4's size always among them."""
    dw, dh = p.video.display_size
    mp4_size = (mp4.width, mp4.height)
    rungs: list[Rung] = []
    if min(dw, dh) >= profile.HLS_TOP_MIN_SHORT and min(dw, dh) > _short(mp4_size):
        w, h = rung_size(dw, dh, min(min(dw, dh), profile.HLS_TOP_MAX_SHORT))
        rungs.append(Rung(f"{min(w, h)}p", w, h, "top", False))
    rungs.append(Rung(f"{_short(mp4_size)}p", *mp4_size, "mp4", not mp4.copy_video))
    if _short(mp4_size) >= profile.HLS_LOW_MIN_SHORT:
        w, h = rung_size(dw, dh, profile.HLS_LOW_SHORT)
        rungs.append(Rung(f"{min(w, h)}p", w, h, "low", False))
    fps = Fraction(min(p.video.fps or profile.MAX_FPS, profile.MAX_FPS)).limit_denominator(1001)
    return LadderPlan(rungs=tuple(rungs), fps=fps, gop=mp4.gop, threads=mp4.threads,
                      segment_seconds=profile.HLS_SEGMENT_SECONDS, audio=mp4.audio, copy_audio=mp4.copy_audio)


def _hls_muxer(lp: LadderPlan, out_dir: Path, name: str) -> list[str]:
    args = ["-f", "hls", "-hls_time", str(lp.segment_seconds), "-hls_playlist_type", "vod",
            "-hls_segment_type", "fmp4", "-hls_list_size", "0"]
    if profile.HLS_SINGLE_FILE:
        args += ["-hls_flags", "single_file+independent_segments",
                 "-hls_segment_filename", str(out_dir / f"{name}.mp4")]
    else:
        args += ["-hls_flags", "independent_segments", "-hls_fmp4_init_filename", f"{name}_init.mp4",
                 "-hls_segment_filename", str(out_dir / f"{name}_%05d.m4s")]
    return args + ["-y", str(out_dir / f"{name}.m3u8")]


def filter_graph(lp: LadderPlan) -> str:
    """`[0:v]` -> constant frame rate from t=0 -> cascade of scales, one `[vN]` per rung."""
    parts, src = [], f"fps=fps={lp.fps}:start_time=0,setsar=1,"
    for i, r in enumerate(lp.rungs):
        last = i == len(lp.rungs) - 1
        head = "[0:v]" + src if i == 0 else f"[n{i - 1}]"
        body = f"scale={r.width}:{r.height},setsar=1,format={profile.PIX_FMT}"
        parts.append(f"{head}{body}" + (f"[v{i}]" if last else f",split=2[v{i}][n{i}]"))
    return ";".join(parts)


def argv_ladder(lp: LadderPlan, p: Probe, src: Path, out_dir: Path, ffmpeg: str = "ffmpeg") -> list[str]:
    argv = [ffmpeg, *encode._COMMON, "-threads", str(lp.threads), *encode.source_args(p, src),
            "-filter_complex", filter_graph(lp)]
    keyframes = f"expr:gte(t,n_forced*{lp.segment_seconds})"
    for i, r in enumerate(lp.rungs):
        s = r.settings
        tune = ["-tune", profile.X264_TUNE] if profile.X264_TUNE else []
        argv += ["-map", f"[v{i}]", "-c:v", profile.VIDEO_CODEC, "-preset", s["preset"], *tune,
                 "-x264-params", s["params"], "-crf", str(s["crf"]), "-profile:v", profile.X264_PROFILE,
                 "-pix_fmt", profile.PIX_FMT, "-maxrate", f"{s['maxrate_kbps']}k", "-bufsize", f"{s['bufsize_kbps']}k",
                 "-g", str(lp.gop), "-force_key_frames", keyframes, "-threads", str(lp.threads),
                 "-an", *encode._STRIP, "-avoid_negative_ts", "disabled", *_hls_muxer(lp, out_dir, r.name)]
    return argv + encode._PROGRESS


def argv_audio(lp: LadderPlan, p: Probe, src: Path, out_dir: Path, ffmpeg: str = "ffmpeg",
               measured: loudness.Measurement | None = None) -> list[str]:
    """The audio rendition; speech normalised as in the MP4 when `measured` says so (loudness.py)."""
    assert lp.audio is not None
    copy = lp.copy_audio and not (measured is not None and measured.normalise)
    return [ffmpeg, *encode._COMMON, *encode.source_args(p, src), "-map", f"0:{lp.audio.index}", "-vn", "-sn", "-dn",
            *encode._audio_codec_args(lp.audio, copy, measured), "-map_metadata", "-1",
            *_hls_muxer(lp, out_dir, AUDIO)]


def argv_mp4(video: Path, audio: Path | None, dst: Path, ffmpeg: str = "ffmpeg") -> list[str]:
    """The MP4 from the shared rung's (and the audio rendition's) fragmented files: a copy."""
    if audio is not None:
        return encode.argv_mux(video, audio, dst, ffmpeg)
    return [ffmpeg, *encode._COMMON, *encode.own_input(video), "-map", "0:v:0", "-c", "copy", "-map_metadata", "-1",
            "-movflags", "+faststart", "-f", "mp4", "-y", str(dst)]


def _media_file(out_dir: Path, name: str) -> Path:
    """The file ffmpeg can read a whole rendition from (single file: the rendition itself;
    else init + segments concatenated, which is a fragmented MP4 too)."""
    if profile.HLS_SINGLE_FILE:
        return out_dir / f"{name}.mp4"
    joined = out_dir.parent / f"{name}-joined.mp4"
    with open(joined, "wb") as out:
        for part in [out_dir / f"{name}_init.mp4", *sorted(out_dir.glob(f"{name}_*.m4s"))]:
            out.write(part.read_bytes())
    return joined


def run(lp: LadderPlan, p: Probe, src: Path, out_dir: Path, workdir: Path, procs: encode.Processes,
        mp4_dst: Path | None, on_progress: encode.ProgressCallback | None = None) -> None:
    """Write the renditions into `out_dir` (and the MP4 to `mp4_dst` when the plan shares a
    rung with it). Raises like encode.run."""
    out_dir.mkdir(parents=True, exist_ok=True)
    job = None
    if lp.audio is not None:
        audio = lp.audio

        def audio_work() -> encode.AudioOutcome:
            measured = encode.measure_audio(procs, audio, p, src, workdir)
            log = workdir / "hls-audio.log"
            encode.wait_for(procs, procs.start(argv_audio(lp, p, src, out_dir, measured=measured), log), log, src,
                            "ffmpeg (audio rendition)")
            return encode.AudioOutcome(measured, lp.copy_audio and not measured.normalise)

        job = encode.AudioJob(audio_work)  # measure, then encode: beside the ladder's encode
    encode.run_with_progress(procs, argv_ladder(lp, p, src, out_dir), workdir / "hls.log", src, "ffmpeg (ladder)",
                             p.duration, on_progress)
    if job is not None:
        job.result()
    shared = lp.shared
    if shared is not None and mp4_dst is not None:
        video = _media_file(out_dir, shared.name)
        audio = _media_file(out_dir, AUDIO) if lp.audio is not None else None
        encode.wait_for(procs, procs.start(argv_mp4(video, audio, mp4_dst), workdir / "hls-mux.log"),
                        workdir / "hls-mux.log", src, "ffmpeg (mp4 from rung)")
        for f in (video, audio):
            if f is not None and f.parent != out_dir:
                f.unlink(missing_ok=True)


# -- measuring what was written ---------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Segment:
    duration: float
    bytes: int
    uri: str
    offset: int | None  # byte range start (single file)


@dataclasses.dataclass(frozen=True)
class MediaPlaylist:
    target_duration: int
    init_uri: str | None
    init_range: tuple[int, int] | None  # (length, offset)
    segments: tuple[Segment, ...]

    @property
    def duration(self) -> float:
        return sum(s.duration for s in self.segments)

    def files(self) -> list[str]:
        names = [self.init_uri] if self.init_uri else []
        for s in self.segments:
            if s.uri not in names:
                names.append(s.uri)
        return names


def parse_media_playlist(path: Path) -> MediaPlaylist:
    text = path.read_text()
    target, init_uri, init_range, segs = 0, None, None, []
    duration, brange, next_offset = None, None, 0
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("#EXT-X-TARGETDURATION:"):
            target = int(line.split(":", 1)[1])
        elif line.startswith("#EXT-X-MAP:"):
            m = re.search(r'URI="([^"]+)"', line)
            init_uri = m.group(1) if m else None
            b = re.search(r'BYTERANGE="(\d+)@(\d+)"', line)
            init_range = (int(b[1]), int(b[2])) if b else None
            if init_range:
                next_offset = init_range[0] + init_range[1]
        elif line.startswith("#EXTINF:"):
            duration = float(line.split(":", 1)[1].split(",")[0])
        elif line.startswith("#EXT-X-BYTERANGE:"):
            length, _, off = line.split(":", 1)[1].partition("@")
            brange = (int(length), int(off) if off else next_offset)
        elif line and not line.startswith("#") and duration is not None:
            if brange:
                size, offset = brange
                next_offset = offset + size
            else:
                size, offset = (path.parent / line).stat().st_size, None
            segs.append(Segment(duration, size, line, offset))
            duration, brange = None, None
    if not segs:
        raise TranscodeError(f"HLS playlist {path.name} has no segments")
    return MediaPlaylist(target, init_uri, init_range, tuple(segs))


def peak_bitrate(pl: MediaPlaylist) -> int:
    """RFC 8216 4.3.4.2: the largest bit rate of any contiguous set of segments whose total
    duration is between 0.5 and 1.5 times the target duration (all of it when shorter)."""
    segs, target = pl.segments, pl.target_duration or 1
    best = 0.0
    for i in range(len(segs)):
        dur, size = 0.0, 0
        for s in segs[i:]:
            dur, size = dur + s.duration, size + s.bytes
            if dur > 1.5 * target:
                break
            if dur >= 0.5 * target:
                best = max(best, size * 8 / dur)
    return int(round(best)) or average_bitrate(pl)


def average_bitrate(pl: MediaPlaylist) -> int:
    return int(round(sum(s.bytes for s in pl.segments) * 8 / max(pl.duration, 1e-6)))


def _boxes(data: bytes, start: int, end: int):
    pos = start
    while pos + 8 <= end:
        size = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8].decode("latin-1")
        header = 8
        if size == 1:
            size, header = int.from_bytes(data[pos + 8:pos + 16], "big"), 16
        elif size == 0:
            size = end - pos
        if size < header:
            return
        yield kind, pos + header, pos + size
        pos += size


def _find(data: bytes, path: list[str], start: int = 0, end: int | None = None) -> tuple[int, int] | None:
    """Payload (start, end) of the first box along `path`; sample entries have fixed-size
    headers before their child boxes (avc1: 78 bytes, mp4a: 28), stsd 8."""
    end = len(data) if end is None else end
    skip = {"stsd": 8, "avc1": 78, "mp4a": 28}
    for kind, s, e in _boxes(data, start, end):
        if kind == path[0]:
            if len(path) == 1:
                return s, e
            return _find(data, path[1:], s + skip.get(kind, 0), e)
    return None


_STBL = ["moov", "trak", "mdia", "minf", "stbl", "stsd"]


def codec_string(init: bytes) -> str:
    """RFC 6381 codec string of the first track of an MP4 init segment, from its sample entry:
    `avc1.PPCCLL` from the avcC box, `mp4a.40.N` from the esds DecoderSpecificInfo."""
    avcc = _find(init, [*_STBL, "avc1", "avcC"])
    if avcc:
        s, _ = avcc
        return "avc1." + init[s + 1:s + 4].hex()
    esds = _find(init, [*_STBL, "mp4a", "esds"])
    if esds:
        s, e = esds
        body = init[s + 4:e]  # after version/flags
        pos, oti = 0, None
        while pos < len(body):
            tag = body[pos]
            pos += 1
            length = 0
            for _ in range(4):
                b = body[pos]
                pos += 1
                length = (length << 7) | (b & 0x7F)
                if not b & 0x80:
                    break
            if tag == 0x03:  # ES_Descriptor: ES_ID(2), flags(1), then nested descriptors
                flags = body[pos + 2]
                pos += 3 + (2 if flags & 0x80 else 0) + ((1 + body[pos + 3]) if flags & 0x40 else 0) + (2 if flags & 0x20 else 0)
                continue
            if tag == 0x04:  # DecoderConfigDescriptor: objectTypeIndication first, 13 bytes, then DSI
                oti = body[pos]
                pos += 13
                continue
            if tag == 0x05 and oti is not None:
                aot = body[pos] >> 3
                if aot == 31:
                    aot = 32 + (((body[pos] & 7) << 3) | (body[pos + 1] >> 5))
                return f"mp4a.{oti:x}.{aot}"
            pos += length
        if oti is not None:
            return f"mp4a.{oti:x}"
    raise TranscodeError("cannot read the codec of an HLS rendition (no avcC/esds box)")


def _init_bytes(out_dir: Path, pl: MediaPlaylist) -> bytes:
    assert pl.init_uri
    with open(out_dir / pl.init_uri, "rb") as f:
        if pl.init_range:
            length, offset = pl.init_range
            f.seek(offset)
            return f.read(length)
        return f.read()


def _ffprobe_stream(path: Path) -> dict:
    own = ffsafe.own_args("hls" if path.suffix == ".m3u8" else "mov")
    done = subprocess.run(["ffprobe", "-v", "error", *own, "-print_format", "json", "-show_streams",
                           "-i", ffsafe.input_url(path)],
                          capture_output=True, timeout=120, stdin=subprocess.DEVNULL, env=ffsafe.child_env())
    if done.returncode != 0:
        raise TranscodeError(f"cannot probe HLS rendition {path.name}")
    return (json.loads(done.stdout or b"{}").get("streams") or [{}])[0]


@dataclasses.dataclass(frozen=True)
class Rendition:
    name: str
    playlist: str
    codecs: str
    bandwidth: int  # this rendition alone (peak)
    average_bandwidth: int
    bytes: int
    segments: int
    duration: float
    width: int | None = None
    height: int | None = None
    frame_rate: float | None = None
    channels: int | None = None

    def as_json(self) -> dict:
        d = {"name": self.name, "playlist": self.playlist, "codecs": self.codecs, "bandwidth": self.bandwidth,
             "averageBandwidth": self.average_bandwidth, "bytes": self.bytes, "segments": self.segments,
             "duration": round(self.duration, 3)}
        if self.width:
            d.update(width=self.width, height=self.height, frameRate=self.frame_rate)
        if self.channels:
            d["channels"] = self.channels
        return d


def measure(out_dir: Path, name: str) -> Rendition:
    playlist = out_dir / f"{name}.m3u8"
    pl = parse_media_playlist(playlist)
    codecs = codec_string(_init_bytes(out_dir, pl))
    media = pl.files()
    total = sum((out_dir / f).stat().st_size for f in media)
    # single file: the rendition file itself; else ffprobe reads the playlist (hls demuxer)
    st = _ffprobe_stream(out_dir / pl.init_uri if profile.HLS_SINGLE_FILE and pl.init_uri else playlist)
    kw: dict = {}
    if codecs.startswith("avc1"):
        rate = Fraction(st.get("avg_frame_rate") or st.get("r_frame_rate") or "0/1")
        if not rate:
            rate = Fraction(st.get("r_frame_rate") or "0/1")
        kw = {"width": int(st["width"]), "height": int(st["height"]), "frame_rate": round(float(rate), 3)}
    else:
        kw = {"channels": int(st.get("channels") or 0) or None}
    return Rendition(name=name, playlist=playlist.name, codecs=codecs, bandwidth=peak_bitrate(pl),
                     average_bandwidth=average_bitrate(pl), bytes=total, segments=len(pl.segments),
                     duration=pl.duration, **kw)


@dataclasses.dataclass(frozen=True)
class Ladder:
    video: tuple[Rendition, ...]
    audio: Rendition | None
    master: str = MASTER

    def variant_bandwidth(self, r: Rendition) -> tuple[int, int]:
        a = self.audio
        return (r.bandwidth + (a.bandwidth if a else 0), r.average_bandwidth + (a.average_bandwidth if a else 0))

    def as_json(self) -> dict:
        out = {"master": self.master, "segmentSeconds": profile.HLS_SEGMENT_SECONDS,
               "rungs": [{**r.as_json(), "variantBandwidth": self.variant_bandwidth(r)[0],
                          "variantAverageBandwidth": self.variant_bandwidth(r)[1]} for r in self.video]}
        if self.audio:
            out["audio"] = self.audio.as_json()
        return out


def master_playlist(ladder: Ladder) -> str:
    lines = ["#EXTM3U", "#EXT-X-VERSION:7", "#EXT-X-INDEPENDENT-SEGMENTS"]
    a = ladder.audio
    if a:
        lines.append(f'#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="audio",NAME="default",LANGUAGE="und",DEFAULT=YES,'
                     f'AUTOSELECT=YES,CHANNELS="{a.channels or 1}",URI="{a.playlist}"')
    for r in ladder.video:
        peak, avg = ladder.variant_bandwidth(r)
        codecs = r.codecs + (f",{a.codecs}" if a else "")
        attrs = [f"BANDWIDTH={peak}", f"AVERAGE-BANDWIDTH={avg}", f'CODECS="{codecs}"',
                 f"RESOLUTION={r.width}x{r.height}", f"FRAME-RATE={r.frame_rate:.3f}"]
        if a:
            attrs.append('AUDIO="audio"')
        lines += ["#EXT-X-STREAM-INF:" + ",".join(attrs), r.playlist]
    return "\n".join(lines) + "\n"


def finish(lp: LadderPlan, out_dir: Path, duration: float) -> Ladder:
    """Check the renditions are what was planned, measure them, write the master playlist."""
    video = []
    for r in lp.rungs:
        m = measure(out_dir, r.name)
        if (m.width, m.height) != (r.width, r.height) or not m.codecs.startswith(("avc1.64", "avc1.4d")):
            raise TranscodeError(f"HLS rung check failed: {r.name} is {m.codecs} {m.width}x{m.height}, "
                                 f"planned avc1 High or Main {r.width}x{r.height}")
        if m.duration < duration * 0.9 - 0.5:
            raise UnusableInput(f"input is truncated or corrupt: only {m.duration:.1f} s of {duration:.1f} s "
                                f"could be decoded")
        video.append(m)
    audio = measure(out_dir, AUDIO) if lp.audio is not None else None
    # the MP4's size first (Apple: playback starts with the first variant), then by size
    start = next(r.name for r in lp.rungs if r.kind == "mp4")
    video.sort(key=lambda m: (m.name != start, -(m.width or 0) * (m.height or 0)))
    ladder = Ladder(tuple(video), audio)
    (out_dir / MASTER).write_text(master_playlist(ladder))
    return ladder


# -- poster -----------------------------------------------------------------------------------

def poster_time(video: Path, workdir: Path, procs: encode.Processes, width: int, height: int) -> float:
    """Seconds into `video` of the first non-black, stable frame (see profile.POSTER_*)."""
    w = 64
    h = max(2, round(w * height / width / 2) * 2)
    argv = ["ffmpeg", *encode._COMMON, "-t", str(profile.POSTER_SCAN_SECONDS), *encode.own_input(video), "-an",
            "-vf", f"fps={profile.POSTER_SCAN_FPS},scale={w}:{h},format=gray", "-f", "rawvideo", "-y",
            str(workdir / "poster-scan.gray")]
    proc = procs.start(argv, workdir / "poster-scan.log")
    procs.wait(proc)
    raw = (workdir / "poster-scan.gray").read_bytes() if proc.returncode == 0 else b""
    n = w * h
    frames = [raw[i:i + n] for i in range(0, len(raw) - n + 1, n)]
    for i, f in enumerate(frames):
        dark = sum(1 for b in f if b < profile.POSTER_DARK_LUMA) / n
        if dark >= profile.POSTER_MAX_DARK_SHARE:
            continue
        if i + 1 < len(frames):
            step = sum(abs(a - b) for a, b in zip(f, frames[i + 1])) / n
            if step >= profile.POSTER_MAX_STEP:
                continue
        return i / profile.POSTER_SCAN_FPS
    return 0.0


def make_poster(video: Path, dst: Path, workdir: Path, procs: encode.Processes, width: int, height: int) -> float:
    t = poster_time(video, workdir, procs, width, height)
    argv = ["ffmpeg", *encode._COMMON, "-ss", f"{t:.3f}", *encode.own_input(video), "-an", "-frames:v", "1",
            "-c:v", "mjpeg", "-q:v", str(profile.POSTER_JPEG_QUALITY), "-pix_fmt", "yuvj420p",
            "-map_metadata", "-1", "-f", "image2", "-update", "1", "-y", str(dst)]
    proc = procs.start(argv, workdir / "poster.log")
    procs.wait(proc)
    if proc.returncode != 0 or not dst.exists():
        raise encode._classify(proc.returncode, (workdir / "poster.log").read_bytes(), video, "ffmpeg (poster)", procs)
    return t
