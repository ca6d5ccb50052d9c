"""Find, in a student's source code and without running it, ready-made attention and the
routes by which code could switch off the worker's own detection of it.

Trusted code, and the first line of defence: it reads source text, so nothing
a student's code does at run time can hide from it. It looks at every name,
attribute and string (strings glued together with + or join are glued here
too, so getattr(F, "scaled_dot" + "_product_attention") is found). The
worker's run-time tripwires are the second line, but they live in the process
the student's code controls: code that reaches the worker's __main__, a
function's closure, the dispatcher's mode stack or torch.ops by a computed name
could switch them off. `find_tampering` finds those routes; a submission that
takes one is marked for a TA, not passed silently.
"""
import ast
import re

# PyTorch's own spellings (case matters: a student's class MultiHeadAttention is fine).
FORBIDDEN = (
    "scaled_dot_product_attention", "_scaled_dot_product", "MultiheadAttention",
    "multi_head_attention_forward", "_native_multi_head_attention", "flash_attn",
    "_flash_attention", "_efficient_attention", "_safe_softmax",
)


# Routes into the worker's own state or PyTorch's dispatcher that plain attention code never needs.
TAMPERING_ROUTES = (
    "__main__", "__closure__", "cell_contents", "__globals__", "f_globals", "f_back", "_getframe",
    "currentframe", "get_referrers", "get_objects", "ctypes",
    "OpRecorder", "_TRIPWIRE_HITS", "install_tripwires", "tripwire",
    "_disable_current_modes", "_DisableTorchDispatch", "_pop_mode", "_push_mode", "_set_dispatch_mode",
    "_get_current_dispatch_mode", "_len_torch_dispatch_stack", "_pop_torch_dispatch_stack",
    "_python_dispatch", "TorchDispatchMode", "_unset_dispatch_mode",
    # dispatcher keys switched off around a computation (the mode stack never sees its ops)
    "_ExcludeDispatchKeyGuard", "_IncludeDispatchKeyGuard", "DispatchKeySet", "_ForceDispatchKeyGuard",
    "_AutoDispatchBelowADInplaceOrView", "_dispatch_tls",
)

# Names (never parts of a name, never text in a string) of code the scan cannot read, or of ways to reach
# any module or object by a name it cannot read.
EXACT_ROUTES = ("exec", "eval", "compile", "__import__", "importlib", "builtins", "__builtins__", "__dict__",
                "__code__", "modules", "gc", "pickle", "marshal", "FunctionType", "CodeType")
# Of those, the builtins that count only called by their bare name (model.eval() and torch.compile are fine).
BUILTIN_ONLY = ("exec", "eval", "compile", "__import__")

# What the in-process measure of memory (OpRecorder) cannot see: work in another thread or process, or
# outside PyTorch (numpy). A memory check of code that takes one is decided by a TA (find_memory_routes).
MEMORY_ROUTES = ("threading", "_thread", "Thread", "multiprocessing", "concurrent", "fork", "subprocess",
                 "numpy", "from_numpy", "ctypes", "np")


def _normalise(text):
    return text.replace(" ", "")


def _defined_names(tree):
    """Names the student's own code defines: using those is not calling PyTorch's attention."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    return names


def _fold(node):
    """The value of a string expression built from constants, else None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mod)):
        left, right = _fold(node.left), _fold(node.right)
        return None if left is None or right is None else left + right
    if isinstance(node, ast.JoinedStr):
        return "".join(_fold(v) or "" for v in node.values)
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "join"
            and node.args and isinstance(node.args[0], (ast.List, ast.Tuple))):
        parts = [_fold(e) for e in node.args[0].elts]
        return None if None in parts else "".join(parts)
    return None


def _strip_magics(source):
    # IPython lines (%magic, !shell) are not Python; blank them so the rest parses.
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())


def _parse(sources):
    trees = []
    for source in sources:
        try:
            trees.append(ast.parse(_strip_magics(source)))
        except SyntaxError:
            trees.append(None)
    return trees


def _find_words(sources, words, labels=None, context=()):
    """[(label, line, word)] for every name, attribute, import or constant string of `sources` holding one
    of `words`. Names the student's own code defines (in `sources` or in `context`, the rest of their
    cells) do not count. A source's label is its 1-based number unless `labels` are given."""
    findings = []
    trees = _parse(sources)
    own = set().union(*(_defined_names(t) for t in trees + _parse(context) if t is not None))
    for cell_number, (source, tree) in zip(labels or range(1, len(sources) + 1), zip(sources, trees)):
        if tree is None:
            # Not parseable: fall back to the text with quotes, + and spaces removed.
            squashed = re.sub(r"[\s'\"+,]", "", source)
            findings += [(cell_number, 0, word) for word in words if word in squashed]
            continue
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module))
                      and node.body and isinstance(node.body[0], ast.Expr)
                      and isinstance(node.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if id(node) in docstrings:
                continue
            texts = []
            if isinstance(node, ast.Name):
                if node.id not in own:
                    texts.append(node.id)
            elif isinstance(node, ast.Attribute):
                texts.append(node.attr)
            elif isinstance(node, ast.alias):
                texts.append(node.name)
                texts.append(node.asname or "")
            else:
                folded = _fold(node)
                if folded is not None:
                    texts.append(folded)
            for text in texts:
                for word in words:
                    if word in _normalise(text):
                        findings.append((cell_number, getattr(node, "lineno", 0), word))
    return findings


def find_forbidden(sources, labels=None, context=()):
    """[(cell, line, what was found)] for every use of a ready-made attention in `sources` (the cells a
    student fills in; `context`: their other cells, whose definitions are their own but not scanned)."""
    return sorted(set(_find_words(sources, FORBIDDEN, labels, context)))


def _dotted(node):
    """'torch.ops.aten' for that attribute chain, else ''."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _find_names(sources, words):
    """[(cell, line, word)] for every name, attribute or imported name of `sources` that is exactly one of `words`."""
    findings = []
    for cell_number, tree in enumerate(_parse(sources), start=1):
        for node in ast.walk(tree) if tree is not None else ():
            names = ([node.id] if isinstance(node, ast.Name) else [node.attr] if isinstance(node, ast.Attribute)
                     else [*node.name.split("."), node.asname or ""] if isinstance(node, ast.alias) else [])
            if not isinstance(node, ast.Name):
                names = [n for n in names if n not in BUILTIN_ONLY]
            findings += [(cell_number, getattr(node, "lineno", 0), n) for n in names if n in words]
    return findings


def _imported_names(trees):
    """Names an import statement binds in the student's code (json, np, F, torch, ...)."""
    names = set()
    for tree in trees:
        for node in ast.walk(tree) if tree is not None else ():
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
    return names


def _root(node):
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def find_tampering(sources):
    """[(cell number, line, what was found)] for every route that could switch off the worker's own
    measures (its tripwires, its trace of the dispatcher's ops and of memory) or edit its replies:
    TAMPERING_ROUTES; an imported module or class changed by assignment (`json.dumps = ...`, `setattr`,
    `delattr`: the worker's own code uses them too); and getattr on an imported module by a name the
    scan cannot read (getattr(F, ''.join(reversed(...)))), which no word list can follow."""
    findings = _find_words(sources, TAMPERING_ROUTES) + _find_names(sources, EXACT_ROUTES)
    trees = _parse(sources)
    imported = _imported_names(trees)
    for cell_number, tree in enumerate(trees, start=1):
        for node in ast.walk(tree) if tree is not None else ():
            targets = []
            if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
                targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
            for target in targets:
                if isinstance(target, ast.Attribute) and _root(target) in imported:
                    findings.append((cell_number, node.lineno, f"{_dotted(target) or target.attr} changed"))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.args:
                first = node.args[0]
                if node.func.id in ("setattr", "delattr") and not (isinstance(first, ast.Name) and first.id == "self"):
                    findings.append((cell_number, node.lineno, f"{node.func.id}({_dotted(first) or '...'}, ...)"))
                if (node.func.id == "getattr" and len(node.args) >= 2 and _fold(node.args[1]) is None
                        and (_root(first) in imported or "ops" in _dotted(first).split("."))):
                    findings.append((cell_number, node.lineno, f"getattr({_dotted(first)}, <computed name>)"))
    return sorted(set(findings))


def find_memory_routes(sources):
    """[(cell number, line, what was found)] for work the worker's measure of memory cannot see (another
    thread or process, numpy): MEMORY_ROUTES, in the cells of the functions whose memory is checked."""
    return sorted(set(_find_names(sources, MEMORY_ROUTES)))
