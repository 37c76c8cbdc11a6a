// Backend `pocketsphinx`: speech recognition with CMU PocketSphinx (Debian's
// libpocketsphinx and its en-us model).
//
// Parameters (defaults: Debian's pocketsphinx-en-us):
//   hmm   acoustic model directory  /usr/share/pocketsphinx/model/en-us/en-us
//   lm    language model            /usr/share/pocketsphinx/model/en-us/en-us.lm.bin
//   dict  pronunciation dictionary  /usr/share/pocketsphinx/model/en-us/cmudict-en-us.dict
//
// Inputs:  `audio`        int16, mono, 16 kHz PCM: shape [samples] or [1, samples]
//          `sample_rate`  optional int32/int64 scalar; anything but 16000 is refused
// Outputs: `text`         uint8 [bytes]: the transcript, UTF-8
//          `words`        uint8 [bytes]: the recognised words, one per line
//                         (fillers such as <s>, <sil> and [NOISE] left out)
//          `word_times`   float32 [words, 3]: start and end (seconds) and the
//                         posterior probability (0..1) of each word in `words`
//
// Wrong dtype, rank, channels, sample rate or empty audio gets
// `invalid_argument` naming what is wrong. A decoder is not thread-safe: the
// model declares itself serial and blocking (its own actor thread).
//
// memory_bytes() is measured, not guessed: the growth of the process's
// resident set (/proc/self/statm) while the decoder was built, which is the
// acoustic model, dictionary and language model as pocketsphinx holds them.
#pragma once

namespace modelreg {

class backend_registry;

/// Registers `pocketsphinx` (no-op when modelreg was built without it).
void add_pocketsphinx_backend(backend_registry& registry);

/// True if this build includes the pocketsphinx backend.
bool have_pocketsphinx() noexcept;

} // namespace modelreg
