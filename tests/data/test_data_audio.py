"""Audio loading: resampling, downmixing, and a clear AudioError for each unusable file."""

import numpy as np
import pytest
import soundfile as sf

from bsrnn.data.audio import AudioError, decode_audio, load_audio, resample, write_wav


def _peak_hz(x, sr=16000):
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.argmax(spec) * sr / len(x)


@pytest.mark.parametrize("sr", [8000, 22050, 44100, 48000])
def test_other_rates_are_resampled(tmp_path, write_tone, sr):
    write_tone(tmp_path / "a.wav", seconds=0.5, sr=sr, freq=440.0)
    x = load_audio(tmp_path / "a.wav")
    assert x.dtype == np.float32 and x.ndim == 1
    assert len(x) == 8000  # 0.5 s at 16 kHz, exactly (rational polyphase factor)
    assert abs(_peak_hz(x) - 440.0) < 4  # pitch preserved, so the rate really changed


def test_stereo_is_downmixed(tmp_path):
    t = np.arange(8000) / 16000
    left, right = 0.4 * np.sin(2 * np.pi * 300 * t), 0.2 * np.sin(2 * np.pi * 300 * t)
    sf.write(tmp_path / "s.flac", np.stack([left, right], 1), 16000)
    x = load_audio(tmp_path / "s.flac")
    assert x.shape == (8000,)
    np.testing.assert_allclose(x, (left + right) / 2, atol=2e-4)  # FLAC is 16-bit: quantisation only


def test_missing_file(tmp_path):
    with pytest.raises(AudioError, match=r"nope\.wav: audio file does not exist"):
        load_audio(tmp_path / "nope.wav")


def test_empty_file(tmp_path):
    (tmp_path / "e.wav").write_bytes(b"")
    with pytest.raises(AudioError, match=r"e\.wav: audio file is empty \(0 bytes\)"):
        load_audio(tmp_path / "e.wav")


def test_corrupt_file(tmp_path):
    (tmp_path / "c.flac").write_bytes(b"RIFF\x00\x00garbage" * 50)
    with pytest.raises(AudioError, match=r"c\.flac: not a readable audio file, corrupt or unsupported format"):
        load_audio(tmp_path / "c.flac")


def test_header_only_wav_has_no_samples(tmp_path):
    sf.write(tmp_path / "z.wav", np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError, match=r"z\.wav: audio file contains no samples"):
        load_audio(tmp_path / "z.wav")


def test_too_short(tmp_path, write_tone):
    write_tone(tmp_path / "short.wav", seconds=0.02)
    with pytest.raises(AudioError, match=r"short\.wav: audio is 0\.020 s long; at least 0\.10 s is needed"):
        load_audio(tmp_path / "short.wav")
    assert len(load_audio(tmp_path / "short.wav", min_seconds=0.01)) == 320


def test_non_finite_samples(tmp_path):
    x = np.zeros(4000, np.float32)
    x[100] = np.nan
    sf.write(tmp_path / "n.wav", x, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN or infinite"):
        load_audio(tmp_path / "n.wav")


def test_audio_error_is_a_value_error():
    assert issubclass(AudioError, ValueError)


def test_write_wav_is_16bit_and_leaves_no_temp(tmp_path):
    x = np.linspace(-1.2, 1.2, 1000).astype(np.float32)  # out of range: clipped, not wrapped
    write_wav(tmp_path / "w.wav", x)
    info = sf.info(tmp_path / "w.wav")
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (16000, 1, "PCM_16", 1000)
    y, _ = sf.read(tmp_path / "w.wav", dtype="int16")
    assert y[0] == -32768 and y[-1] == 32767
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.wav"]


def test_decode_audio_reads_a_streamed_wav_with_bogus_sizes():
    import io
    buf = io.BytesIO()
    sf.write(buf, np.full(2205, 0.25, np.float32), 22050, format="WAV", subtype="PCM_16")
    data = bytearray(buf.getvalue())
    data[4:8] = data[40:44] = b"\xff\xff\xff\xff"  # what espeak-ng --stdout writes
    x, sr = decode_audio(bytes(data))
    assert sr == 22050 and len(x) == 2205
    assert len(resample(x, sr, 16000)) == 1600
    with pytest.raises(AudioError, match="no audio data"):
        decode_audio(b"", "espeak-ng output")


def test_trim_silence_keeps_a_tenth_of_a_second_each_side():
    from bsrnn.data.audio import trim_silence
    tone = 0.5 * np.sin(2 * np.pi * 200 * np.arange(8000) / 16000).astype(np.float32)
    wave = np.concatenate([np.zeros(16000, np.float32), tone, np.full(4800, 1e-4, np.float32)])  # -74 dB tail
    out = trim_silence(wave)
    assert len(out) == 1600 + 8000 + 1600 and not out[:1600].any() and not out[-1600:].any()
    np.testing.assert_array_equal(out[1600:-1600], tone)
    assert len(trim_silence(np.zeros(3200, np.float32))) == 0  # nothing loud: nothing left


def test_add_noise_hits_the_snr_without_clipping():
    from bsrnn.data.audio import add_noise
    rng = np.random.default_rng(0)
    wave = (0.9 * np.sin(2 * np.pi * 300 * np.arange(32000) / 16000)).astype(np.float32)
    for snr in (10.0, 30.0):
        noisy = add_noise(wave, snr, rng)
        scale = np.dot(noisy, wave) / np.dot(wave, wave)  # the no-clip rescale, if any
        noise = noisy - scale * wave
        measured = 10 * np.log10(np.mean((scale * wave) ** 2) / np.mean(noise**2))
        assert noisy.dtype == np.float32 and np.abs(noisy).max() < 1.0 and abs(measured - snr) < 0.2
    again = add_noise(wave, 10.0, np.random.default_rng(5))
    np.testing.assert_array_equal(again, add_noise(wave, 10.0, np.random.default_rng(5)))
