// Backend `flite`: text to speech with CMU Flite (Debian's flite1-dev and its
// voices).
//
// Parameters:
//   voice            a Debian flite voice: cmu_us_kal16 (default; 16 kHz,
//                    what the en-us speech recogniser takes), cmu_us_kal
//                    (8 kHz), cmu_us_awb, cmu_us_rms, cmu_us_slt (16 kHz)
//   max_text_bytes   the longest text one request may carry (default 16384)
//
// Inputs:  `text`         uint8 [bytes]: UTF-8 text
// Outputs: `audio`        int16 [samples]: mono PCM at the voice's rate
//          `sample_rate`  int32 [1]: that rate (16000 for cmu_us_kal16)
//
// Empty text, text that is not UTF-8 or holds a NUL byte, a wrong dtype or
// rank, or text over max_text_bytes gets `invalid_argument` naming what is
// wrong. Text with nothing to say ("...") gives zero samples.
//
// The voice is loaded with dlopen from its shared library, so every voice
// Debian ships works without linking them all. Synthesis is thread-safe
// with one voice shared by every thread (measured: valgrind's helgrind
// finds no race with 4 threads synthesising different sentences with one
// voice, and 8 threads produce the same samples as one), so the model
// declares itself thread-safe and runs on lanes.
//
// memory_bytes() is measured: the growth of the process's resident set
// while the voice was loaded and spoke one warm-up sentence (a voice is
// loaded once per process: a second model with the same voice shares it).
#pragma once

namespace modelreg {

class backend_registry;

/// Registers `flite` (no-op when modelreg was built without it).
void add_flite_backend(backend_registry& registry);

/// True if this build includes the flite backend.
bool have_flite() noexcept;

} // namespace modelreg
