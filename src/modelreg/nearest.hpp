// "Did you mean ...?": the nearest of a few names to a mistyped one.
#pragma once

#include <string>
#include <vector>

namespace modelreg {

/// The name in `names` nearest to `word` if it is close enough to be a typo
/// (edits, adjacent transpositions counting one, at most a third of the
/// word's length and at least one), else empty.
std::string nearest_name(const std::string& word, const std::vector<std::string>& names);

} // namespace modelreg
