"""How hard a shared token is to guess: a small estimate in bits, and the check config loading applies.

Theory of operation
-------------------
A token of length *n* drawn at random from an alphabet of *N* characters has ``n * log2(N)`` bits.
`estimate_bits` starts from that (*N* is the sum of the character classes the token uses: lowercase,
uppercase, digits, ASCII symbols, anything else), then looks for the ways people make tokens that
are much easier to guess than random ones, and charges each matched stretch only what it costs an
attacker who tries those patterns first:

- a word from a short list of common passwords and words (`COMMON_WORDS`, also with the usual
  ``0 -> o``, ``@ -> a`` substitutions): about ``log2(rank)`` bits, plus a bit for capitals;
- a run of one character (``aaaa``): the character plus ``log2(length)``;
- a sequence (``abcd``, ``4321``) or a keyboard row (``qwerty``): its start plus ``log2(length)``;
- a repeat of an earlier stretch (``abcabc``): where it starts and how long it is.

The cheapest way to write the whole token from such pieces (dynamic programming over positions) is the
estimate. It is a guide, not a proof: it cannot know every word (a passphrase of ordinary words not in
the list is over-estimated), and it says nothing about how the token was kept. What it reliably does is
tell a generated token (22 random url-safe characters: about 130 bits) from a word, a name with digits
or a keyboard walk (under 40).
"""

from __future__ import annotations

import math
import string

from pierce.errors import InvalidValue

#: Tokens below this many estimated bits are refused unless the operator allows weak tokens.
MIN_TOKEN_BITS = 64
#: Only this many leading characters are examined (the work grows with the square of the length);
#: a longer token is at least as strong as its prefix.
MAX_EXAMINED = 256

#: Common passwords and the words people build tokens from, most common first (the rank is the cost).
COMMON_WORDS: tuple[str, ...] = (
    "password", "123456", "qwerty", "secret", "token", "admin", "letmein", "welcome", "monkey",
    "dragon", "master", "sunshine", "iloveyou", "princess", "football", "baseball", "shadow",
    "superman", "trustno1", "login", "passw", "pass", "test", "testing", "changeme", "default",
    "example", "pierce", "tunnel", "server", "client", "root", "user", "guest", "hello", "freedom",
    "whatever", "qazwsx", "michael", "jessica", "charlie", "thomas", "jordan", "hunter", "ranger",
    "buster", "soccer", "hockey", "killer", "george", "andrew", "daniel", "access", "flower",
    "summer", "winter", "spring", "autumn", "starwars", "pokemon", "computer", "internet", "secure",
    "private", "public", "mypass", "love", "god", "sex", "money", "cookie", "banana", "apple",
    "orange", "cheese", "coffee", "purple", "yellow", "silver", "golden", "diamond", "matrix",
    "ninja", "mustang", "batman", "tigger", "pepper", "ginger", "maggie", "abc", "qwe", "asd",
    "zxc", "home", "office", "network", "system", "backup", "linux", "ubuntu", "raspberry", "docker",
    "frp", "ngrok", "vpn", "ssh", "web", "demo", "temp", "key", "code", "word", "open", "sesame",
)  # fmt: skip

_KEYBOARD_ROWS = ("`1234567890-=", "qwertyuiop[]\\", "asdfghjkl;'", "zxcvbnm,./")
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s"})
_SYMBOLS = frozenset(string.punctuation + " ")
_MIN_PATTERN = 3


def charset_size(token: str) -> int:
    """How many characters the alphabet of `token` has, judged by the classes it uses."""
    size = 0
    if any(c in string.ascii_lowercase for c in token):
        size += 26
    if any(c in string.ascii_uppercase for c in token):
        size += 26
    if any(c in string.digits for c in token):
        size += 10
    if any(c in _SYMBOLS for c in token):
        size += len(_SYMBOLS)
    if any(not c.isascii() or not c.isprintable() for c in token):
        size += 100  # a guess: other characters exist, but people draw them from a few scripts
    return size


def estimate_bits(token: str) -> float:
    """The estimated strength of `token` in bits (see the module text); 0 for an empty token."""
    text = token[:MAX_EXAMINED]
    n = len(text)
    if n == 0:
        return 0.0
    per_char = math.log2(max(charset_size(text), 2))
    lowered = text.lower()
    normalized = lowered.translate(_LEET)
    # cost[i]: fewest bits to write text[:i] from single characters and patterns.
    cost = [0.0] + [math.inf] * n

    def offer(start: int, length: int, bits: float) -> None:
        cost[start + length] = min(cost[start + length], cost[start] + bits)

    for i in range(n):
        offer(i, 1, per_char)
        # a run of one character
        run = 1
        while i + run < n and text[i + run] == text[i]:
            run += 1
        for length in range(_MIN_PATTERN, run + 1):
            offer(i, length, per_char + math.log2(length))
        # an ascending or descending sequence of code points (abcd, 9876)
        if i + 1 < n and abs(step := ord(text[i + 1]) - ord(text[i])) == 1:
            length = 2
            while i + length < n and ord(text[i + length]) - ord(text[i + length - 1]) == step:
                length += 1
            for k in range(_MIN_PATTERN, length + 1):
                offer(i, k, per_char + math.log2(k) + 1)
        # a walk along a keyboard row, either way
        for row in _KEYBOARD_ROWS:
            for line in (row, row[::-1]):
                for length in range(_MIN_PATTERN, _common_prefix(lowered, i, line) + 1):
                    offer(i, length, math.log2(len(line)) + math.log2(length) + 3)
        # a common word, maybe capitalised or with digits for letters (one bit each)
        for rank, word in enumerate(COMMON_WORDS, start=1):
            if normalized.startswith(word, i) or lowered.startswith(word, i):
                stretch = lowered[i : i + len(word)]
                substituted = sum(1 for a, b in zip(stretch, word, strict=True) if a != b)
                capitals = any(c.isupper() for c in text[i : i + len(word)])
                offer(i, len(word), math.log2(rank) + 1 + substituted + capitals)
        # a repeat of a stretch seen earlier
        for length in range(_MIN_PATTERN, n - i + 1):
            if text.find(text[i : i + length], 0, i) < 0:
                break
            offer(i, length, math.log2(i) + math.log2(length))
    return cost[n]


def _common_prefix(text: str, start: int, line: str) -> int:
    """The longest stretch of `text` from `start` that appears in `line` (consecutive keys)."""
    first = line.find(text[start])
    if first < 0:
        return 0
    k = 0
    while start + k < len(text) and first + k < len(line) and text[start + k] == line[first + k]:
        k += 1
    return k


def check_token_strength(key: str, token: str, allow_weak: bool) -> None:
    """Raise `InvalidValue` naming `key` when `token` is estimated below `MIN_TOKEN_BITS` bits.

    Nothing is checked when `allow_weak` is true (the operator's ``allow_weak_token = true``).
    """
    if allow_weak:
        return
    bits = estimate_bits(token)
    if bits >= MIN_TOKEN_BITS:
        return
    raise InvalidValue(
        key,
        f"this token is too easy to guess: about {bits:.0f} bits estimated, at least {MIN_TOKEN_BITS} "
        "expected (a generated one has about 130). Leave the server's token unset so it generates one, "
        "use a random one (e.g. `openssl rand -hex 16`), or set allow_weak_token = true to accept it",
    )
