"""Import-only stand-in for PyAV on the GPU machine (benchmarks/gpu/run_gpu.sh installs it only
where PyAV is missing).

AudioCraft imports `av` at the top of `audiocraft/data/audio.py` and uses it only to read audio
other than FLAC/OGG (`_av_read`, `_av_info`). The GPU run reads FLAC (soundfile), so it never
gets here; the real wheel (35 MB) would not fit in what travels with the tree (64 MiB).
"""
from _stand_in import missing

IMPORT_ONLY_STAND_IN = True
__getattr__ = missing('av', 'PyAV (reads WAV/MP3 in AudioCraft): use FLAC files on this machine')
