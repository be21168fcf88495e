"""The output profile: what "a small, streamable 720p lecture" means in ffmpeg terms.

Every number here is chosen by measurement on lecture-like content (slides, a speaker inset,
speech); `bench/transcode.py` prints the figures and the README records them. The encode
pipeline (`encode.py`) reads these constants and nothing else decides quality or size."""

from __future__ import annotations

# Fit within 1280x720 (landscape) or 720x1280 (portrait); never upscale.
MAX_LONG_SIDE = 1280
MAX_SHORT_SIDE = 720
MAX_FPS = 30

# Video: H.264 High, 8-bit 4:2:0 (what every browser decodes).
VIDEO_CODEC = "libx264"
X264_PRESET = "veryfast"
X264_CRF = 24
X264_PROFILE = "high"
PIX_FMT = "yuv420p"
# Rate cap so a noisy camera clip cannot blow up the size: maxrate/bufsize in kbit/s.
MAXRATE_KBPS = 2500
BUFSIZE_KBPS = 5000
# Keyframe at least every GOP_SECONDS so seeking in the player stays quick.
GOP_SECONDS = 4

# Audio: speech. AAC-LC.
AUDIO_CODEC = "aac"
AUDIO_BITRATE_KBPS = 96
AUDIO_CHANNELS = 2
AUDIO_SAMPLE_RATE = 48000

# Remux instead of re-encode when the input already is H.264 8-bit 4:2:0 within the size
# limits, AAC audio, and its video bitrate is no more than this (else it is re-encoded to
# shrink it).
REMUX_MAX_VIDEO_KBPS = 3000

# Encode the audio in a second ffmpeg process beside the video one and mux the two at the end.
# In ffmpeg 5.1 the filter graph and the audio encoder share one thread with the decoder, so
# on a 2-CPU quota that thread, not x264, limits the speed; a separate process takes the
# audio off it (the mux afterwards is a copy of a small file).
PARALLEL_AUDIO = True

# AAC audio within the channel limit is copied, not re-encoded, up to this bitrate: above it a
# re-encode at AUDIO_BITRATE_KBPS saves real bytes; below it, it would only add a generation
# of coding loss. (Unknown bitrates, e.g. in Matroska, are re-encoded.)
AUDIO_COPY_MAX_KBPS = 120
