#!/usr/bin/env python3
"""Writes child/hot_text.ld from a link map and profiles of agents.

See docs/architecture.md, "Hot text"."""
import argparse, bisect, glob, os, re, subprocess, sys

# Section names that many objects share: a rule for one names its file too.
GENERIC = {".text", ".text.startup", ".text.unlikely", ".text.hot", ".text.exit"}


def input_sections(map_path):
    """(address, size, section, file) of every input section of the program's code, from
    ld.lld's map: "VMA LMA Size Align" and then an output section, indented by 8 an input
    section ("file:(section)"), by 16 a symbol."""
    out, in_text = [], False
    line_re = re.compile(r"^\s*([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)\s+\d+ (\s*)(\S.*)$")
    for line in open(map_path):
        m = line_re.match(line.rstrip("\n"))
        if not m:
            continue
        indent, what = len(m.group(3)), m.group(4)
        if indent == 0:
            in_text = what in (".text", ".text.grove_hot")
        elif indent == 8 and in_text:
            section = re.match(r"^(.*):\((\S+)\)$", what)
            if section and int(m.group(2), 16) > 0:
                out.append((int(m.group(1), 16), int(m.group(2), 16), section.group(2),
                            section.group(1)))
    return sorted(out)


def executed(profiles):
    """Instruction addresses in callgrind outputs (written with --dump-instr=yes
    --compress-pos=no) and in `perf record -e page-faults -d` files (*.data: the instructions
    that faulted, which catch what a native run touches and valgrind's does not; in
    *.children.data, only those of the processes the recorded program started)."""
    addrs = set()
    for path in profiles:
        if path.endswith(".data"):
            samples = subprocess.run(["perf", "script", "-F", "pid,ip", "-i", path], check=True,
                                     capture_output=True, text=True).stdout.split("\n")
            samples = [line.split() for line in samples if line.strip()]
            # *.children.data: only the processes the recorded program started.
            skip = samples[0][0] if path.endswith(".children.data") and samples else None
            addrs.update(int(ip, 16) for pid, ip in samples if pid != skip)
            continue
        for line in open(path):
            if line.startswith("0x"):
                addrs.add(int(line.split()[0], 16))
    return addrs


def file_pattern(path):
    """A linker script's file pattern for a map's file: 'dir/libx.a(member.o)' or
    'bazel-out/.../_objs/TARGET/f.o' (any target's: grove_symbols stands for every program)."""
    m = re.match(r"^(.*/)?([^/]+\.a)\((.+)\)$", path)
    if m:
        return "*/%s:%s" % (m.group(2), m.group(3))
    m = re.search(r"/_objs/[^/]+/(.+)$", path)  # Bazel's: bazel-out/.../_objs/TARGET/f.o
    return "*/_objs/*/" + m.group(1) if m else "*/" + os.path.basename(path)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("map", help="the link map of the profiled program (-Wl,-Map=FILE)")
    parser.add_argument("--phase", action="append", required=True, metavar="GLOB",
                        help="profiles of one phase (callgrind outputs, perf *.data); "
                        "phases are laid out in order")
    parser.add_argument("--keep", metavar="LD",
                        help="a script written before, whose rules go first, in their order")
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args()
    sections = input_sections(args.map)
    starts = [s[0] for s in sections]
    phase_of = {}  # Input section index -> the first phase that ran it.
    for phase, pattern in enumerate(args.phase):
        paths = sorted(glob.glob(pattern))
        if not paths:
            sys.exit("hot_text.py: no profile matches %s" % pattern)
        for a in executed(paths):
            i = bisect.bisect_right(starts, a) - 1
            if i >= 0 and a < sections[i][0] + sections[i][1]:
                phase_of.setdefault(i, phase)
    lines, seen = [], set()
    if args.keep:
        for line in open(args.keep):
            rule = line.strip()
            if line.startswith("    ") and rule.endswith(")") and rule not in seen:
                seen.add(rule)
                lines.append("    " + rule)
    for i in sorted(phase_of, key=lambda i: (phase_of[i], i)):
        _, length, name, path = sections[i]
        if name in GENERIC:
            rule = "%s(%s)" % (file_pattern(path), name)
        else:
            rule = "*(%s)" % name  # A function's own section (COMDAT): its name says which.
        if rule not in seen:
            seen.add(rule)
            lines.append("    " + rule)
    size = sum(s[1] for i, s in enumerate(sections) if i in phase_of)
    with open(args.output, "w") as out:
        out.write(HEADER % len(lines))
        out.write("\n".join(lines))
        out.write(FOOTER)
    print("hot_text.py: %d rules; the profiles ran %d KiB of code in %d input sections" %
          (len(lines), size // 1024, len(phase_of)), file=sys.stderr)


HEADER = """\
/* Generated by tools/hot_text.py: do not edit (docs/architecture.md, "Hot text").
 * The code an agent runs to start, link up, answer calls and exit, gathered in one place so
 * that the pages the kernel maps around what it touches are few (%d rules). */
SECTIONS
{
  .text.grove_hot :
  {
"""
FOOTER = """
  }
}
INSERT BEFORE .text;
"""

if __name__ == "__main__":
    main()
