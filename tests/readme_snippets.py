#!/usr/bin/env python3
"""The README's Python snippets, run as a reader would run them: every ```python block of README.md in order,
in one interpreter session (a later block uses what an earlier one made), from a temporary directory that holds
the repository's tools/; the natgrad commands of the ```sh blocks between the first and the last Python block
run where they stand, with ./build/apps/natgrad replaced by the binary under test. (The sh blocks after the
last Python block need data the test does not have, such as Debian's fortunes file.)

A block that applies a direction (it reads direction.safetensors) is checked for what it claims: every
parameter becomes θ − η d with the η it uses, and the buffers are left as they were.

usage: readme_snippets.py <natgrad binary> <repository>
Exit 77 (skipped) without torch, unless NATGRAD_REQUIRE_TORCH=1.
"""
import atexit
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

natgrad, repo = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
try:
    import torch
except ImportError as e:
    print("torch is not importable (%s): python3-torch runs the README's snippets" % e)
    sys.exit(1 if os.environ.get("NATGRAD_REQUIRE_TORCH") == "1" else 77)

with open(os.path.join(repo, "README.md")) as f:
    readme = f.read()
blocks = re.findall(r"^```(\w*)\n(.*?)^```", readme, re.S | re.M)
python = [i for i, (lang, _) in enumerate(blocks) if lang == "python"]
if not python:
    sys.exit("README.md has no ```python block")

work = tempfile.mkdtemp(prefix="natgrad_readme_")
atexit.register(shutil.rmtree, work, True)
os.symlink(os.path.join(repo, "tools"), os.path.join(work, "tools"))
os.chdir(work)
session = {"__name__": "__readme__"}
failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


def shell_commands(text):
    """The commands of an sh block: backslash continuations joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    for line in joined.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            yield line


# The Python package, where the build made it (<build>/python beside <build>/apps/natgrad).
package = os.path.join(os.path.dirname(os.path.dirname(natgrad)), "python")
sys.path.insert(0, package)

for i in range(python[0], python[-1] + 1):
    lang, text = blocks[i]
    if lang == "python" and "import natgrad" in text and not os.path.isdir(os.path.join(package, "natgrad")):
        print("--- python block %d not run: the Python package is not built (NATGRAD_BUILD_PYTHON)" % i)
        continue
    if lang == "python":
        applies = "direction.safetensors" in text
        model = session.get("model")
        if applies:
            step = re.search(r"p -= ([0-9.eE+-]+) \* d\[name\]", text)
            check(step is not None, "block %d applies the direction as p -= eta * d[name]" % i)
            params = {n: p.detach().clone() for n, p in model.named_parameters()}
            buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
        print("--- python block %d (%d lines)" % (i, text.count("\n")))
        try:
            exec(compile(text, "README.md python block %d" % i, "exec"), session)
        except Exception as e:  # a snippet that fails is the finding
            check(False, "python block %d runs: %r" % (i, e))
            break
        check(True, "python block %d runs" % i)
        if applies and step is not None:
            eta, d = float(step.group(1)), session["d"]
            for n, p in model.named_parameters():
                check(n in d, "the direction holds %s" % n)
                if n in d:
                    want = params[n] - eta * d[n].to(params[n].dtype)
                    check(torch.equal(p.detach(), want), "%s is theta - %g d" % (n, eta))
                    check(not torch.equal(p.detach(), d[n].to(p.dtype)), "%s is not the direction itself" % n)
            for n, b in model.named_buffers():
                check(torch.equal(b, buffers[n]), "buffer %s unchanged" % n)
    elif lang == "sh":
        for cmd in shell_commands(text):
            if not cmd.startswith("./build/apps/natgrad "):
                print("--- not run (not a natgrad command): " + cmd)
                continue
            args = shlex.split(cmd)[1:]
            print("--- natgrad " + " ".join(args))
            r = subprocess.run([natgrad] + args, capture_output=True, text=True, timeout=600)
            check(r.returncode == 0, "`natgrad %s` exits 0 (%s)" % (" ".join(args), r.stderr.strip()[-400:]))

# A direction is a step: no text offers it to load_state_dict, which would replace the weights by it.
offers = [line.strip() for line in readme.splitlines() if re.search(r"load_state_dict\(\s*d\b", line)]
check(not offers, "README.md never loads a direction d as weights with load_state_dict: %s" % offers)

sys.exit(1 if failures else 0)
