"""Log line normalization: mask the variable parts of a line into placeholder tokens.

``2023-10-10 08:02:30 ERROR admin login failed from 192.168.1.1`` becomes
``admin login failed from <ip>`` (with the defaults: timestamps and levels dropped, the
address masked). Every rule can be switched off; the rules travel with a model artifact
(:meth:`Normalizer.to_dict`) so scoring masks exactly as training did.

Durations (``took 120 ms``, ``latency=3.2s``) become order-of-magnitude buckets such as
``<dur:1e2ms>`` instead of ``<num>``: a latency 50 times out of range stays visible.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from typing import Any

_LEVEL_WORDS = [
    "TRACE",
    "DEBUG",
    "INFO",
    "INFORMATION",
    "NOTICE",
    "WARN",
    "WARNING",
    "ERROR",
    "ERR",
    "SEVERE",
    "CRITICAL",
    "CRIT",
    "FATAL",
    "EMERG",
    "PANIC",
]
# upper case and capitalized only: "trace 5 done" keeps its word, "TRACE"/"Trace" are levels
LEVELS = "|".join(
    [*_LEVEL_WORDS, *(w.capitalize() for w in _LEVEL_WORDS), "调试", "信息", "警告", "错误", "严重", "致命"]
)
# words that follow "user" in prose and are not a user name
_NOT_NAMES = {
    "login",
    "logged",
    "logging",
    "logout",
    "not",
    "failed",
    "session",
    "request",
    "requests",
    "id",
    "name",
    "is",
    "was",
    "has",
    "had",
    "the",
    "a",
    "an",
    "with",
    "from",
    "to",
    "for",
    "in",
    "on",
    "and",
    "or",
    "authentication",
    "auth",
    "account",
    "unknown",
    "data",
    "profile",
    "<user>",
}

# what the user mask needs in the (lower-cased) line before its regex runs
_USER_KEYS = ("user", "uid", "login", "account", "用户")
_MONTH = r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)[a-z]*"
_TIMESTAMP_PATTERNS = [
    # ISO 8601 / common: 2023-10-10 08:02:30,123 / 2023-10-10T08:02:30.123Z / 2005-06-03-15.42.50.675872
    r"\d{4}[-/.]\d{1,2}[-/.]\d{1,2}(?:[T\s\-_]+\d{1,2}[:.]\d{2}[:.]\d{2}(?:[.,:]\d+)?(?:Z|[+-]\d{2}:?\d{2})?)?",
    # 10/Oct/2000:13:55:36 -0700 (Apache)
    r"\d{1,2}/" + _MONTH + r"/\d{4}(?::\d{2}:\d{2}:\d{2})?(?:\s[+-]\d{4})?",
    # Sun Dec 04 04:47:44 2005 / Jun 14 15:16:01
    r"(?:(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)[a-z]*\s+)?" + _MONTH + r"\s+\d{1,2}\s+\d{2}:\d{2}:\d{2}(?:\s+\d{4})?",
    # 2023年10月10日 08:02:30
    r"\d{4}年\d{1,2}月\d{1,2}日(?:\s*\d{1,2}[:：]\d{2}(?:[:：]\d{2})?)?",
    # HDFS: 081109 203615 at the start of a line
    r"^\d{6}\s\d{6}(?=\s)",
    # bare clock time 08:02:30(.123)
    r"(?<![\w:])\d{1,2}:\d{2}:\d{2}(?:[.,]\d+)?(?![\w:])",
]

_IPV6 = (
    r"(?<![\w:.])(?:"
    r"(?:[0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}"
    r"|(?:[0-9a-fA-F]{1,4}:){1,7}:"
    r"|(?:[0-9a-fA-F]{1,4}:){1,6}:[0-9a-fA-F]{1,4}"
    r"|(?:[0-9a-fA-F]{1,4}:){1,5}(?::[0-9a-fA-F]{1,4}){1,2}"
    r"|(?:[0-9a-fA-F]{1,4}:){1,4}(?::[0-9a-fA-F]{1,4}){1,3}"
    r"|(?:[0-9a-fA-F]{1,4}:){1,3}(?::[0-9a-fA-F]{1,4}){1,4}"
    r"|(?:[0-9a-fA-F]{1,4}:){1,2}(?::[0-9a-fA-F]{1,4}){1,5}"
    r"|[0-9a-fA-F]{1,4}:(?::[0-9a-fA-F]{1,4}){1,6}"
    r"|::(?:[0-9a-fA-F]{1,4}:){0,5}[0-9a-fA-F]{1,4}"
    r")(?![\w:])"
)
_IPV4 = r"(?<![\w.])(?:25[0-5]|2[0-4]\d|1?\d?\d)(?:\.(?:25[0-5]|2[0-4]\d|1?\d?\d)){3}(?![\w.])"
_UNITS = {
    "ns": 1e-6,
    "us": 1e-3,
    "µs": 1e-3,
    "ms": 1.0,
    "s": 1000.0,
    "sec": 1000.0,
    "secs": 1000.0,
    "seconds": 1000.0,
    "second": 1000.0,
    "m": 60000.0,
    "min": 60000.0,
    "mins": 60000.0,
    "minutes": 60000.0,
    "毫秒": 1.0,
    "秒": 1000.0,
    "分钟": 60000.0,
}
_DURATION = re.compile(
    r"(?<![A-Za-z0-9_.])(\d+(?:\.\d+)?)\s?(ns|us|µs|ms|secs?|seconds?|mins?|minutes?|s|m|毫秒|秒|分钟)(?![A-Za-z])"
)


@dataclass
class NormalizerConfig:
    """Which masks apply; all on by default. ``drop_*`` remove a part instead of masking it."""

    drop_timestamps: bool = True
    drop_levels: bool = True
    mask_emails: bool = True
    mask_urls: bool = True
    mask_paths: bool = True
    mask_uuids: bool = True
    mask_ipv6: bool = True
    mask_ipv4: bool = True
    mask_ports: bool = True
    mask_hex: bool = True
    mask_ids: bool = True
    mask_users: bool = True
    bucket_durations: bool = True
    mask_numbers: bool = True
    lowercase: bool = False
    collapse_whitespace: bool = True


class Normalizer:
    """Masks variable fields of log lines into placeholder tokens (``<ip>``, ``<num>``, ...)."""

    def __init__(self, config: NormalizerConfig | None = None) -> None:
        self.config = config or NormalizerConfig()
        c = self.config
        self._ts = re.compile("|".join(f"(?:{p})" for p in _TIMESTAMP_PATTERNS), re.MULTILINE)
        self._leading_level = re.compile(rf"^\W*(?:\[?(?:{LEVELS})\]?:?)(?=\s|$)\s*")
        self._inner_level = re.compile(rf"(?<![\w<])\[?(?:{LEVELS})\]?:?(?=\s|$)")
        self._email = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
        self._url = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s\"'<>]+")
        self._path = re.compile(r"(?<![\w<>/])(?:[A-Za-z]:\\[^\s\"']+|(?:~|\.{1,2})?(?:/[\w.\-@%+]+){2,}/?)")
        self._uuid = re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b")
        self._ipv6 = re.compile(_IPV6)
        self._ipv4_port = re.compile(_IPV4 + r"(:\d{1,5})?(?![\w.])")
        self._port = re.compile(r"(?i)\bport[\s=:]+\d{1,5}\b")
        self._hex = re.compile(r"(?<![\w<])(?:0x[0-9a-fA-F]+|[0-9a-fA-F]*\d[0-9a-fA-F]*[a-fA-F][0-9a-fA-F]*)(?![\w>])")
        # identifiers with a digit inside a word: req-8f3a2b, blk_-123, user42, trace_id=ab12cd
        self._id = re.compile(r"(?<![\w<])([A-Za-z][A-Za-z]*[_-])(-?[0-9A-Za-z]*\d[0-9A-Za-z_-]*)(?![\w>])")
        self._user = re.compile(
            r"(?i)(?<![\w<])(user(?:name)?|uid|login|account|用户)(\s*[=:]\s*|\s+)'?([^\s,;'\"=]+)'?"
        )
        self._number = re.compile(r"(?<![\w<])[-+]?\d+(?:[.,]\d+)*(?![\w>])")
        self._zh_number = re.compile(r"(?<=[\u4e00-\u9fff])\d+(?:\.\d+)?|\d+(?:\.\d+)?(?=[\u4e00-\u9fff])")
        self._spaces = re.compile(r"\s+")
        _ = c

    @staticmethod
    def _bucket_token(match: re.Match[str]) -> str:
        value = float(match.group(1)) * _UNITS[match.group(2)]
        if value <= 0:
            return "<dur:0>"
        return f"<dur:1e{math.floor(math.log10(value))}ms>"

    @staticmethod
    def _mask_user(match: re.Match[str]) -> str:
        key, sep, name = match.group(1), match.group(2), match.group(3)
        if not sep.strip() and (key.lower() == "login" or name.lower() in _NOT_NAMES):
            return match.group(0)
        return f"{key}{sep}<user>"

    def normalize(self, line: str) -> str:
        """Return the masked form of one log line."""
        c = self.config
        text = line
        if c.drop_timestamps:
            text = self._ts.sub(" ", text)
        # each mask runs only where the characters it needs are there (a substring test costs far less
        # than a regex scan; the result is the same)
        if c.mask_urls and "://" in text:
            text = self._url.sub("<url>", text)
        if c.mask_emails and "@" in text:
            text = self._email.sub("<email>", text)
        if c.mask_uuids and text.count("-") >= 4:
            text = self._uuid.sub("<uuid>", text)
        if c.mask_paths and ("/" in text or "\\" in text):
            text = self._path.sub("<path>", text)
        if c.mask_ipv6 and text.count(":") >= 2:
            text = self._ipv6.sub("<ip>", text)
        if c.mask_ipv4 and text.count(".") >= 3:
            text = self._ipv4_port.sub(lambda m: "<ip>:<port>" if m.group(1) and c.mask_ports else "<ip>", text)
        lower = text.lower()
        if c.mask_ports and "port" in lower:
            text = self._port.sub("port <port>", text)
        buckets: list[str] = []
        if c.bucket_durations:
            # the bucket tokens hold digits: park them behind private-use characters until the end,
            # so the hex, id and number masks cannot rewrite them
            def park(match: re.Match[str]) -> str:
                buckets.append(self._bucket_token(match))
                return f"\ue000{chr(0xE100 + len(buckets) - 1)}\ue001"

            text = _DURATION.sub(park, text)
        if c.drop_levels:
            text = self._leading_level.sub("", text.strip())
            text = self._inner_level.sub(" ", text)
        if c.mask_users and any(key in lower for key in _USER_KEYS):
            text = self._user.sub(self._mask_user, text)
        if c.mask_ids:
            text = self._id.sub(lambda m: f"{m.group(1)}<id>", text)
        if c.mask_hex:
            text = self._hex.sub("<hex>", text)
        if c.mask_numbers:
            text = self._number.sub("<num>", text)
            if not text.isascii():
                text = self._zh_number.sub("<num>", text)
        if buckets:
            text = re.sub("\ue000(.)\ue001", lambda m: buckets[ord(m.group(1)) - 0xE100], text)
        if c.lowercase:
            text = text.lower()
        if c.collapse_whitespace:
            text = self._spaces.sub(" ", text).strip()
        return text

    def __call__(self, line: str) -> str:
        return self.normalize(line)

    def normalize_many(self, lines: list[str]) -> list[str]:
        """Normalize each line of a sequence."""
        return [self.normalize(line) for line in lines]

    def to_dict(self) -> dict[str, Any]:
        """The rules as a JSON-ready dict, for saving beside a model."""
        return {"version": 1, **asdict(self.config)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Normalizer:
        """Rebuild from :meth:`to_dict` output; unknown keys are ignored."""
        known = {f.name for f in fields(NormalizerConfig)}
        return cls(NormalizerConfig(**{k: v for k, v in data.items() if k in known}))


_WORKER: Normalizer | None = None


def _start_worker(config: dict[str, Any]) -> None:
    global _WORKER
    _WORKER = Normalizer(NormalizerConfig(**config))


def _normalize_chunk(lines: list[str]) -> list[str]:
    assert _WORKER is not None
    return [_WORKER.normalize(line) for line in lines]


class NormalizerPool:
    """One normalizer's masks applied on several processes: a GPU's host has cores to spare, and at
    tens of thousands of lines a second one Python thread is what caps the detector there.

    The processes start on first use (``spawn``: safe beside CUDA) and live until :meth:`close`.
    Lines go out in chunks of at least ``min_chunk``; fewer lines than two chunks are normalized here.
    """

    def __init__(self, normalizer: Normalizer, workers: int, min_chunk: int = 2048) -> None:
        self.normalizer, self.workers, self.min_chunk = normalizer, workers, min_chunk
        self._pool: Any = None

    def normalize(self, lines: list[str]) -> list[str]:
        """The masked form of each line, in order."""
        if self.workers < 2 or len(lines) < 2 * self.min_chunk:
            return [self.normalizer.normalize(line) for line in lines]
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_worker,
                initargs=(asdict(self.normalizer.config),),
            )
        size = max(self.min_chunk, -(-len(lines) // (self.workers * 2)))
        chunks = [lines[i : i + size] for i in range(0, len(lines), size)]
        return [text for part in self._pool.map(_normalize_chunk, chunks) for text in part]

    def close(self) -> None:
        """Stop the processes."""
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None
