"""Classification samples and instruction records for the LLM explainer, in English and Chinese.

    python data_gen/anomaly_classification_generator.py --num-classification 4500 \
        --num-instructions 2000 --lang both --seed 42 --output-dir data/

Anomalous sequences only (the explainer sees what the detector flagged). They come from the
sequence generator, or from ``--input`` (a sequence file; its anomalous records are used).
Writes ``anomaly_classification.jsonl``, ``instructions_alpaca.jsonl`` ({instruction, input,
output}), ``instructions_chat.jsonl`` ({messages}, plus sequence_id, lang and log_entries) and
``labels.json``; line i of the two instruction files is the same example. It also writes
``normal_reference.jsonl``: normal sequences (sequence records, label 0) in the same languages,
difficulty and noise (``--num-reference``, default 600; 0: not written), from a seed of their
own, or with ``--input`` that file's normal records; the explainer's trainer compares each
sequence with them (``large_model.evidence``). The same seed gives byte-identical files.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from core.cli_args import run_cli
from core.errors import DataError, LogTriageError
from core.io import read_records, write_json, write_jsonl, write_records
from core.labels import ANOMALY_TYPES, SEVERITIES
from core.schema import SequenceRecord
from data_gen.anomalies import BASE_SEVERITY, TYPE_TITLES
from data_gen.catalog import FLOWS, lang_index, service_name
from data_gen.cli_utils import derive_seed, setup_logging
from data_gen.log_sequence_generator import DIFFICULTIES, GeneratorConfig, generate_sequences

log = logging.getLogger(__name__)

CLASSIFICATION_FILE = "anomaly_classification.jsonl"
ALPACA_FILE = "instructions_alpaca.jsonl"
CHAT_FILE = "instructions_chat.jsonl"
LABELS_FILE = "labels.json"
REFERENCE_FILE = "normal_reference.jsonl"  # large_model.evidence.REFERENCE_FILE (data_gen imports no model code)
ANSWER_KEYS = ("category", "severity", "summary", "root_cause", "suggested_response")
_CJK = re.compile(r"[\u4e00-\u9fff]")

SYSTEM_PROMPTS = (
    "You are LogTriage, a site-reliability assistant. You read microservice log sequences that a detector "
    "flagged as anomalous and explain them to the on-call operator.",
    "你是 LogTriage，一名站点可靠性助手。你阅读被检测器标记为异常的微服务日志序列，并向值班运维人员解释原因。",
)
INSTRUCTIONS = (
    "Classify the anomaly in the log sequence below and explain it. Reply with one JSON object with the keys "
    '"category" (one of: {categories}), "severity" (one of: {severities}), "summary", "root_cause" and '
    '"suggested_response".',
    "请对下面日志序列中的异常进行分类并解释。只输出一个 JSON 对象，包含键 "
    '"category"（取值之一：{categories}）、"severity"（取值之一：{severities}）、"summary"、"root_cause" 和 '
    '"suggested_response"，其中 summary、root_cause 和 suggested_response 用中文书写。',
)
# type-level advice for input records that carry no suggested_response of their own
GENERIC_RESPONSES: dict[str, tuple[str, str]] = {
    "timeout": (
        "Check the latency and saturation of the service that did not answer and of its dependencies; confirm the "
        "caller's deadline fits normal latency, scale the slow service out and keep retries bounded.",
        "检查未响应服务及其依赖的延迟和资源饱和度；确认调用方的超时设置与正常延迟相符，对慢服务扩容，并限制重试。",
    ),
    "connection_failure": (
        "Check that the target service is running and reachable (pods, endpoints, DNS, network policies) and "
        "restart or fail it over if it is down.",
        "检查目标服务是否运行且可达（Pod、Endpoints、DNS、网络策略），如已宕机则重启或切换。",
    ),
    "database_error": (
        "Read the database log for the failing statement (deadlock, constraint, schema or read-only error), fix "
        "the query or apply the missing migration, and retry the failed transaction.",
        "查看数据库日志中失败语句的原因（死锁、约束、表结构或只读错误），修复查询或执行缺失的迁移，并重试失败的事务。",
    ),
    "service_call_failure": (
        "Look at the failing downstream service's errors and traces, roll back a recent deployment if it "
        "introduced them, and keep the caller's fallback and circuit breaker on meanwhile.",
        "查看出错的下游服务的错误日志和链路追踪，如由近期发布引入则回滚，同时保持调用方的降级和熔断开启。",
    ),
    "resource_exhaustion": (
        "Find which resource ran out (threads, memory, connections, file descriptors, disk), relieve it "
        "(scale out, raise the limit, free space) and look for the leak or load that exhausted it.",
        "确定耗尽的资源（线程、内存、连接、文件描述符、磁盘），通过扩容、调高上限或释放空间缓解，并排查导致耗尽的泄漏或负载。",
    ),
    "permission_error": (
        "Grant the calling principal the missing permission (role, scope or ACL) and review recent RBAC or "
        "credential changes.",
        "为调用方授予缺失的权限（角色、scope 或 ACL），并审查近期的 RBAC 或凭据变更。",
    ),
    "missing_step": (
        "Find out why the flow skipped a required step (feature flag, code path, swallowed error) and reconcile "
        "the affected request.",
        "排查流程为何跳过了必需步骤（功能开关、代码分支、被吞掉的异常），并核对受影响的请求。",
    ),
    "out_of_order": (
        "Look for a race that lets a step run before the one it depends on; enforce the order (sequential "
        "call, saga/outbox) and check the request left consistent state.",
        "排查导致步骤先于其依赖步骤执行的竞态；通过顺序调用或 saga/outbox 保证顺序，并确认请求的数据状态一致。",
    ),
    "retry_storm": (
        "Find the transient errors behind the retries and cap them (exponential backoff with jitter, retry "
        "budget, circuit breaker) so they do not amplify load.",
        "排查导致重试的瞬时错误，并限制重试（带抖动的指数退避、重试预算、熔断），避免放大负载。",
    ),
    "latency_spike": (
        "Check the slow service for saturation, GC pauses or a slow dependency at that time and compare with "
        "its latency dashboards; scale or roll back if it repeats.",
        "检查慢服务在该时段的资源饱和、GC 停顿或慢依赖，对照延迟监控面板；如反复出现则扩容或回滚。",
    ),
}
_GENERIC_RESPONSE = (
    "Inspect the anomalous lines, identify the failing service and its recent changes, and mitigate (rollback, "
    "scale out, failover) before fixing the cause.",
    "检查异常日志行，确定出错的服务及其近期变更，先通过回滚、扩容或切换止损，再修复根因。",
)


def record_lang(record: SequenceRecord) -> str:
    """The record's language: its ``lang`` field, or ``zh`` when its lines hold Chinese."""
    lang = record.extra.get("lang")
    if lang in ("en", "zh"):
        return str(lang)
    return "zh" if any(_CJK.search(line) for line in record.log_entries) else "en"


def _title(category: str, li: int) -> str:
    if category in TYPE_TITLES:
        return TYPE_TITLES[category][li]
    return category.replace("_", " ").capitalize()


def summary_text(category: str, flow: str | None, service: str, lang: str) -> str:
    """One sentence: what went wrong, in which flow, where."""
    li = lang_index(lang)
    flow_title = FLOWS[flow].title[li] if flow in FLOWS else ("请求" if li else "request")
    if li:
        return f"{flow_title}流程中出现{_title(category, li)}，根因服务：{service_name(service, lang)}。"
    return f"{_title(category, li)} in the {flow_title} flow, caused by {service}."


def classification_sample(record: SequenceRecord) -> dict[str, Any]:
    """A classification sample from an anomalous record; missing explanation fields get type-level defaults."""
    extra = record.extra
    category = str(record.anomaly_type)
    lang = record_lang(record)
    li = lang_index(lang)
    severity = extra.get("severity")
    if severity not in SEVERITIES:
        severity = BASE_SEVERITY.get(category, "medium")
    service = str(extra.get("root_cause_service") or "unknown")
    root_cause = extra.get("root_cause") or (
        f"{_title(category, li)}，根因服务：{service_name(service, lang)}"
        if li
        else f"{_title(category, li)} with root cause in {service}"
    )
    response = extra.get("suggested_response") or GENERIC_RESPONSES.get(category, _GENERIC_RESPONSE)[li]
    return {
        "sequence_id": record.sequence_id,
        "log_entries": list(record.log_entries),
        "category": category,
        "severity": severity,
        "summary": summary_text(category, extra.get("flow"), service, lang),
        "root_cause_service": service,
        "root_cause": str(root_cause),
        "suggested_response": str(response),
        "lang": lang,
    }


def instruction_records(sample: dict[str, Any], categories: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The same example in Alpaca form ({instruction, input, output}) and chat form ({messages, ...})."""
    li = lang_index(sample["lang"])
    instruction = INSTRUCTIONS[li].format(categories=", ".join(categories), severities=", ".join(SEVERITIES))
    logs = "\n".join(sample["log_entries"])
    answer = json.dumps({key: sample[key] for key in ANSWER_KEYS}, ensure_ascii=False)
    alpaca = {"instruction": instruction, "input": logs, "output": answer}
    chat = {
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPTS[li]},
            {"role": "user", "content": f"{instruction}\n\n{logs}"},
            {"role": "assistant", "content": answer},
        ],
        # beside the messages, so a trainer can rebuild the prompt with its own template
        "sequence_id": sample["sequence_id"],
        "lang": sample["lang"],
        "log_entries": list(sample["log_entries"]),
    }
    return alpaca, chat


def _lang_counts(total: int, lang: str) -> dict[str, int]:
    if lang == "both":
        return {"en": (total + 1) // 2, "zh": total // 2}
    return {lang: total}


def generated_records(
    n_classification: int, n_instructions: int, lang: str, difficulty: str, noise: float, seed: int, progress: bool
) -> tuple[list[SequenceRecord], list[SequenceRecord]]:
    """Fresh anomalous sequences for the two sets (disjoint ids), each balanced over types and languages."""
    out: list[list[SequenceRecord]] = []
    for part, total in (("cls", n_classification), ("ins", n_instructions)):
        records: list[SequenceRecord] = []
        for code, count in _lang_counts(total, lang).items():
            if count == 0:
                continue
            config = GeneratorConfig(
                num_sequences=count,
                anomaly_ratio=1.0,
                difficulty=difficulty,
                noise=noise,
                lang=code,
                seed=derive_seed(seed, f"{part}:{code}") % (2**31),
                id_prefix=f"{part}-{code}",
            )
            records.extend(generate_sequences(config, progress))
        random.Random(derive_seed(seed, f"{part}:order")).shuffle(records)
        out.append(records)
    return out[0], out[1]


def reference_records(
    num: int, lang: str, difficulty: str, noise: float, seed: int, progress: bool
) -> list[SequenceRecord]:
    """Normal sequences, ``num`` in all, in the languages of the sets (half each for ``both``), their own seeds."""
    records: list[SequenceRecord] = []
    for code, count in _lang_counts(num, lang).items():
        if count == 0:
            continue
        config = GeneratorConfig(
            num_sequences=count,
            anomaly_ratio=0.0,
            difficulty=difficulty,
            noise=noise,
            lang=code,
            seed=derive_seed(seed, f"ref:{code}") % (2**31),
            id_prefix=f"ref-{code}",
        )
        records.extend(generate_sequences(config, progress))
    return records


def reference_from_input(path: Path, num: int, lang: str, seed: int) -> list[SequenceRecord]:
    """Up to ``num`` normal records (label 0 or none) of a sequence file, in the chosen language(s), seeded sample."""
    normal = [r for r in read_records(path) if r.label != 1]
    if lang != "both":
        normal = [r for r in normal if record_lang(r) == lang]
    if len(normal) > num:
        keep = sorted(random.Random(derive_seed(seed, "ref:input")).sample(range(len(normal)), num))
        normal = [normal[i] for i in keep]
    return normal


def records_from_input(
    path: Path, n_classification: int, n_instructions: int, lang: str, seed: int
) -> tuple[list[SequenceRecord], list[SequenceRecord]]:
    """The anomalous records of a sequence file, shuffled, split between the two sets."""
    records = read_records(path)
    anomalous = [r for r in records if r.label == 1 and r.anomaly_type]
    if lang != "both":
        anomalous = [r for r in anomalous if record_lang(r) == lang]
    if not anomalous:
        which = "" if lang == "both" else f" in language {lang!r}"
        raise DataError(f"no anomalous records with an anomaly_type{which} (of {len(records)} records)", path)
    random.Random(derive_seed(seed, "input")).shuffle(anomalous)
    classification = anomalous[:n_classification]
    rest = anomalous[n_classification:]
    if len(classification) < n_classification:
        log.warning("only %d anomalous records for %d classification samples", len(anomalous), n_classification)
    if len(rest) >= n_instructions:
        instructions = rest[:n_instructions]
    else:
        log.warning("%d records left for %d instruction records: reusing records", len(rest), n_instructions)
        instructions = (rest + anomalous * (n_instructions // len(anomalous) + 1))[:n_instructions]
    return classification, instructions


def label_set(samples: list[dict[str, Any]]) -> list[str]:
    """The known categories, then any others found in the samples (sorted)."""
    found = sorted({s["category"] for s in samples} - set(ANOMALY_TYPES))
    return [*ANOMALY_TYPES, *found]


def build_parser() -> argparse.ArgumentParser:
    """The command line of this script."""
    parser = argparse.ArgumentParser(
        prog="anomaly_classification_generator.py",
        description="Write anomaly classification samples and instruction records (Alpaca and chat) as JSONL.",
    )
    parser.add_argument("--input", type=Path, default=None, help="sequence file to use instead of generating")
    parser.add_argument("--output-dir", type=Path, default=Path("data"), help="output folder (default data/)")
    parser.add_argument("--num-classification", type=int, default=4500, help="classification samples (default 4500)")
    parser.add_argument("--num-instructions", type=int, default=2000, help="instruction records (default 2000)")
    parser.add_argument(
        "--num-reference",
        type=int,
        default=600,
        help=f"normal sequences written to {REFERENCE_FILE}, the explainer's reference of normal runs "
        "(default 600; 0: none)",
    )
    parser.add_argument("--lang", choices=("en", "zh", "both"), default="both", help="language (default both)")
    parser.add_argument("--difficulty", choices=DIFFICULTIES, default="hard", help="for generated sequences")
    parser.add_argument("--noise", type=float, default=0.05, help="background-line chance, generated sequences")
    parser.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar, warnings only")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Build and write the classification and instruction sets."""
    args = build_parser().parse_args(argv)
    setup_logging(args.quiet)

    def body() -> int:
        if args.num_classification < 0 or args.num_instructions < 0 or args.num_reference < 0:
            raise LogTriageError("--num-classification, --num-instructions and --num-reference must not be negative")
        if args.input is not None:
            cls_records, ins_records = records_from_input(
                args.input, args.num_classification, args.num_instructions, args.lang, args.seed
            )
            reference = reference_from_input(args.input, args.num_reference, args.lang, args.seed)
            if args.num_reference and not reference:
                log.warning("%s has no normal records: no %s written", args.input, REFERENCE_FILE)
        else:
            GeneratorConfig(noise=args.noise, difficulty=args.difficulty).validate()
            cls_records, ins_records = generated_records(
                args.num_classification,
                args.num_instructions,
                args.lang,
                args.difficulty,
                args.noise,
                args.seed,
                not args.quiet,
            )
            reference = reference_records(
                args.num_reference, args.lang, args.difficulty, args.noise, args.seed, not args.quiet
            )
        samples = [classification_sample(r) for r in cls_records]
        instruction_samples = [classification_sample(r) for r in ins_records]
        categories = label_set(samples + instruction_samples)
        pairs = [instruction_records(s, categories) for s in instruction_samples]
        out: Path = args.output_dir
        write_jsonl(out / CLASSIFICATION_FILE, samples)
        write_jsonl(out / ALPACA_FILE, (alpaca for alpaca, _ in pairs))
        write_jsonl(out / CHAT_FILE, (chat for _, chat in pairs))
        if reference:
            write_records(out / REFERENCE_FILE, reference)
        write_json(
            out / LABELS_FILE,
            {
                "categories": categories,
                "severities": list(SEVERITIES),
                "titles": {c: {"en": _title(c, 0), "zh": _title(c, 1)} for c in categories},
            },
        )
        langs = Counter(s["lang"] for s in samples + instruction_samples)
        log.info(
            "%d classification samples, %d instruction records (%s), %d normal reference runs -> %s",
            len(samples),
            len(pairs),
            ", ".join(f"{k}={v}" for k, v in sorted(langs.items())),
            len(reference),
            out,
        )
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
