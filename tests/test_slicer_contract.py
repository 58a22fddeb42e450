"""Static contract of the Slicer module against the Slicer API of every release it claims (5.6.2 ... 5.13.0-dev).

``../shared/slicer_api/slicer_python_api.json`` lists, per release, the names in slicer.util,
slicer.ScriptedLoadableModule, slicer.parameterNodeWrapper and the public C++ methods of the main MRML classes.
The module file and the MRML helper are parsed with ``ast`` and every Slicer call is checked against it:

* ``slicer.util.f(...)``: exists in every release, keyword arguments accepted, not too many positional ones;
* names imported from slicer.util / slicer.ScriptedLoadableModule / slicer.parameterNodeWrapper exist;
* ``self.m(...)`` in classes built on ScriptedLoadableModule* / VTKObservationMixin: ``m`` is defined by the
  class or a base in every release (unittest.TestCase for the test class);
* MRML / VTK method calls (``receiver.CamelCase(...)``): the receiver's class is known (from the variable name,
  ``slicer.vtkX`` or the method that returned it), the method is declared by that class or its bases in every
  release (JSON), and no keyword arguments are passed (wrapped C++ methods take none). Classes the JSON does not
  list (vtkSegment, vtkSlicerVolumesLogic, ...) are checked on the installed slicer-core / VTK classes instead.

Plus: Python 3.9 syntax for every file Slicer loads, the .ui file matches the widget code and the parameter node,
and the extension's CMake files name the scripts and resources.
"""

from __future__ import annotations

import ast
import json
import re
import unittest
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import REPO

API_JSON = Path(REPO).parent / "shared" / "slicer_api" / "slicer_python_api.json"
VERSIONS = ("5.6.2", "5.8.1", "5.10.0", "5.13.0-dev")
MODULE_DIR = REPO / "MONAIUNetSeg"
MODULE_FILE = MODULE_DIR / "MONAIUNetSeg.py"
LIB_DIR = MODULE_DIR / "MONAIUNetSegLib"  # Slicer-only glue
CORE_DIR = MODULE_DIR / "monaiunetseg"  # the Slicer-free core, loaded by the module and its background process
SLICER_CALLING_FILES = (MODULE_FILE, LIB_DIR / "mrml.py", LIB_DIR / "segmentations.py", LIB_DIR / "markups.py",
                        LIB_DIR / "training_cases.py", LIB_DIR / "background.py", LIB_DIR / "logic.py",
                        LIB_DIR / "dependencies.py")

# Declared C++ bases of the classes the module touches (JSON lists methods under the declaring class).
BASES = {
    "vtkMRMLLabelMapVolumeNode": "vtkMRMLScalarVolumeNode",
    "vtkMRMLScalarVolumeNode": "vtkMRMLVolumeNode",
    "vtkMRMLVolumeNode": "vtkMRMLDisplayableNode",
    "vtkMRMLSegmentationNode": "vtkMRMLDisplayableNode",
    "vtkMRMLMarkupsLineNode": "vtkMRMLMarkupsNode",
    "vtkMRMLMarkupsNode": "vtkMRMLDisplayableNode",
    "vtkMRMLMarkupsDisplayNode": "vtkMRMLDisplayNode",
    "vtkMRMLTransformNode": "vtkMRMLDisplayableNode",
    "vtkMRMLLinearTransformNode": "vtkMRMLTransformNode",
    "vtkMRMLDisplayableNode": "vtkMRMLTransformableNode",
    "vtkMRMLTransformableNode": "vtkMRMLStorableNode",
    "vtkMRMLStorableNode": "vtkMRMLNode",
    "vtkMRMLColorTableNode": "vtkMRMLColorNode",
    "vtkMRMLColorNode": "vtkMRMLStorableNode",
    "vtkMRMLSubjectHierarchyNode": "vtkMRMLNode",
    "vtkMRMLSegmentationDisplayNode": "vtkMRMLDisplayNode",
    "vtkMRMLDisplayNode": "vtkMRMLNode",
    "vtkMRMLVolumeArchetypeStorageNode": "vtkMRMLStorageNode",
    "vtkMRMLStorageNode": "vtkMRMLNode",
    "vtkMRMLNode": "vtkObject",
    "vtkMRMLScene": "vtkObject",
    "vtkSlicerSegmentationsModuleLogic": "vtkSlicerModuleLogic",
    "vtkSlicerVolumesLogic": "vtkSlicerModuleLogic",
    "vtkSlicerModuleLogic": "vtkMRMLAbstractLogic",
    "vtkMRMLAbstractLogic": "vtkObject",
    "vtkSegment": "vtkObject",
    "vtkSegmentation": "vtkObject",
}
# The module and slicer_mrml name MRML/VTK objects consistently; a new name needs a line here.
RECEIVERS = {
    "scene": "vtkMRMLScene", "mrmlScene": "vtkMRMLScene",
    "shNode": "vtkMRMLSubjectHierarchyNode",
    "segmentation": "vtkSegmentation", "segment": "vtkSegment",
    "volumesLogic": "vtkSlicerVolumesLogic",
    "factory": "vtkSegmentationConverterFactory", "rule": "vtkSegmentationConverterRule",
    "imageData": "vtkImageData", "segmentIds": "vtkStringArray",
    "calldata": "vtkMRMLNode", "vtkMatrix": "vtkMatrix4x4", "matrix": "vtkMatrix4x4",
    "lineNode": "vtkMRMLMarkupsLineNode", "lineDisplayNode": "vtkMRMLMarkupsDisplayNode",
}
SUFFIX_RECEIVERS = (  # checked in order
    ("LabelmapNode", "vtkMRMLLabelMapVolumeNode"),
    ("SegmentationNode", "vtkMRMLSegmentationNode"),
    ("TransformNode", "vtkMRMLTransformNode"),
    ("StorageNode", "vtkMRMLVolumeArchetypeStorageNode"),
    ("DisplayNode", "vtkMRMLDisplayNode"),
    ("VolumeNode", "vtkMRMLScalarVolumeNode"),
    ("Volume", "vtkMRMLScalarVolumeNode"),
    ("Matrix", "vtkMatrix4x4"),
)
RETURNS = {  # declared return class of methods whose result is used directly
    "GetSegmentation": "vtkSegmentation", "GetSegment": "vtkSegment", "GetImageData": "vtkImageData",
    "GetDisplayNode": "vtkMRMLDisplayNode", "GetScene": "vtkMRMLScene", "GetParentTransformNode": "vtkMRMLTransformNode",
    "GetInstance": "vtkSegmentationConverterFactory", "GetSubjectHierarchyNode": "vtkMRMLSubjectHierarchyNode",
    "GetNodeByID": "vtkMRMLNode", "GetNthNodeByClass": "vtkMRMLNode", "GetNodeReference": "vtkMRMLNode",
    "CreateOrientedImageDataFromVolumeNode": "vtkOrientedImageData",
}
# vtkObject(Base) methods, for when neither slicer-core nor VTK is importable.
VTK_OBJECT_METHODS = {"IsA", "GetClassName", "AddObserver", "RemoveObserver", "RemoveObservers", "HasObserver",
                      "InvokeEvent", "Modified", "GetMTime", "SafeDownCast", "IsTypeOf", "Register", "UnRegister"}
# slicer.parameterNodeWrapper re-exports its submodules with "*"; the JSON records only the wildcard. These are
# the names those submodules have exported since 5.2 (wrapper, validators, default, parameterPack, guiConnectors).
PARAMETER_NODE_WRAPPER_STAR = {"parameterNodeWrapper", "parameterPack", "Default", "Choice", "WithinRange",
                               "Minimum", "Maximum", "NotNone", "IsInstance", "Exclude", "RangeBounds",
                               "Decimals", "SingleStep", "Validator"}
SLICER_TOP_LEVEL = {"util", "mrmlScene", "app", "modules", "ScriptedLoadableModule", "parameterNodeWrapper", "packaging"}


@pytest.fixture(scope="module")
def api() -> dict:
    if not API_JSON.is_file():
        pytest.skip(f"Slicer API facts not found at {API_JSON}")
    data = json.loads(API_JSON.read_text())
    missing = [v for v in VERSIONS if v not in data]
    assert not missing, f"the API file lacks {missing}"
    return {v: data[v] for v in VERSIONS}


def _real_class(name: str):
    """The installed class (slicer-core or VTK), or None when neither is importable / has it."""
    for modname in ("slicer", "vtk"):
        try:
            module = __import__(modname)
        except ImportError:
            continue
        cls = getattr(module, name, None)
        if cls is not None:
            return cls
    return None


class Checker:
    """Collects contract problems of one source file against ``api`` (version -> facts)."""

    def __init__(self, api: dict, filename: str = "<src>") -> None:
        self.api = api
        self.filename = filename
        self.problems: list[str] = []
        self.unverifiable: list[str] = []

    # --- helpers ------------------------------------------------------------------------------------------
    def problem(self, node: ast.AST, text: str) -> None:
        self.problems.append(f"{self.filename}:{getattr(node, 'lineno', '?')}: {text}")

    def versions_without(self, predicate) -> list[str]:
        return [v for v in self.api if not predicate(self.api[v])]

    @staticmethod
    def _chain(cls: str) -> list[str]:
        chain = [cls]
        while chain[-1] in BASES:
            chain.append(BASES[chain[-1]])
        return chain

    def receiver_class(self, expr: ast.expr) -> str | None:
        if isinstance(expr, ast.Name):
            return self._by_name(expr.id)
        if isinstance(expr, ast.Attribute):
            if isinstance(expr.value, ast.Name) and expr.value.id in ("slicer", "vtk") and expr.attr.startswith("vtk"):
                return expr.attr
            return self._by_name(expr.attr)
        if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute):
            return RETURNS.get(expr.func.attr)
        return None

    @staticmethod
    def _by_name(name: str) -> str | None:
        name = name.lstrip("_")
        if name in RECEIVERS:
            return RECEIVERS[name]
        for suffix, cls in SUFFIX_RECEIVERS:
            if name.lower().endswith(suffix.lower()):
                return cls
        return None

    # --- MRML / VTK methods -------------------------------------------------------------------------------
    def check_method(self, node: ast.Call, cls: str, method: str) -> None:
        if node.keywords:
            self.problem(node, f"{cls}.{method}: keyword arguments to a wrapped C++ method "
                               f"({', '.join(k.arg or '**' for k in node.keywords)})")
        chain = self._chain(cls)
        listed = [c for c in chain if c in self.api[VERSIONS[0]]["mrml_cxx_methods"]]
        in_json = {v: any(method in facts["mrml_cxx_methods"].get(c, ()) for c in chain) for v, facts in self.api.items()}
        if all(in_json.values()):
            return
        if any(in_json.values()):
            self.problem(node, f"{cls}.{method} is missing in Slicer {[v for v, ok in in_json.items() if not ok]}")
            return
        # Not declared by any listed class of the chain: a class the JSON does not cover must declare it.
        unlisted = [c for c in chain if c not in listed]
        if not unlisted:
            self.problem(node, f"{cls}.{method} does not exist (not in {chain})")
            return
        real = _real_class(cls) or next((r for r in map(_real_class, unlisted) if r is not None), None)
        if real is not None:
            if not hasattr(real, method):
                self.problem(node, f"{cls}.{method} does not exist (installed {real.__name__})")
            else:
                self.unverifiable.append(f"{cls}.{method} (checked on the installed slicer-core only)")
            return
        if "vtkObject" in chain and method in VTK_OBJECT_METHODS:
            return
        self.problem(node, f"{cls}.{method}: neither in the API file nor checkable (slicer-core not installed)")

    def check_class_exists(self, node: ast.AST, cls: str) -> None:
        if any(cls in facts["mrml_cxx_methods"] for facts in self.api.values()):
            return
        if _real_class(cls) is None:
            try:
                import slicer  # noqa: F401
            except ImportError:
                self.unverifiable.append(f"class {cls}")
                return
            self.problem(node, f"class {cls} does not exist")

    # --- slicer.util ----------------------------------------------------------------------------------------
    def check_util_call(self, node: ast.Call, name: str) -> None:
        for version, facts in self.api.items():
            entry = facts["slicer.util"].get(name)
            if entry is None:
                self.problem(node, f"slicer.util.{name} does not exist in Slicer {version}")
                continue
            if isinstance(entry, dict):  # a class: its constructor
                entry = [p for p in entry.get("__init__", ["self"]) if p != "self"]
            if entry == "re-exported":
                continue
            self._check_signature(node, f"slicer.util.{name}", entry, version)

    def _check_signature(self, node: ast.Call, label: str, params: list[str], version: str) -> None:
        varkw = "**kwargs" in params or any(p.startswith("**") for p in params)
        varargs = any(p.startswith("*") and not p.startswith("**") for p in params)
        plain = [p for p in params if not p.startswith("*")]
        for kw in node.keywords:
            if kw.arg is not None and kw.arg not in plain and not varkw:
                self.problem(node, f"{label}: keyword {kw.arg!r} not accepted in Slicer {version} (parameters {params})")
        positional = [a for a in node.args if not isinstance(a, ast.Starred)]
        if not varargs and len(positional) > len(plain):
            self.problem(node, f"{label}: {len(positional)} positional arguments, Slicer {version} takes {len(plain)}")

    def check_import(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if module not in ("slicer.util", "slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper"):
            return
        for alias in node.names:
            if alias.name == "*":
                self.problem(node, f"'from {module} import *' hides which names are used")
                continue
            for version, facts in self.api.items():
                names = facts.get(module, {})
                if alias.name in names:
                    continue
                if module == "slicer.parameterNodeWrapper" and "*" in names and alias.name in PARAMETER_NODE_WRAPPER_STAR:
                    continue
                self.problem(node, f"{module}.{alias.name} does not exist in Slicer {version}")

    # --- classes built on Slicer bases ---------------------------------------------------------------------
    def base_methods(self, base: str, facts: dict) -> set[str] | None:
        if base in facts["slicer.ScriptedLoadableModule"] and isinstance(facts["slicer.ScriptedLoadableModule"][base], dict):
            methods = set(facts["slicer.ScriptedLoadableModule"][base])
            if base == "ScriptedLoadableModuleTest":
                methods |= {m for m in dir(unittest.TestCase) if not m.startswith("__")} | {"__init__"}
            return methods
        if isinstance(facts["slicer.util"].get(base), dict):
            return set(facts["slicer.util"][base])
        return None

    def check_class(self, cls: ast.ClassDef) -> None:
        bases = [b.id for b in cls.bases if isinstance(b, ast.Name)]
        if not any(self.base_methods(b, self.api[VERSIONS[0]]) is not None for b in bases):
            return
        own = {n.name for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        own |= {t.id for n in cls.body if isinstance(n, (ast.Assign, ast.AnnAssign))
                for t in (n.targets if isinstance(n, ast.Assign) else [n.target]) if isinstance(t, ast.Name)}
        assigned = {t.attr for n in ast.walk(cls) if isinstance(n, (ast.Assign, ast.AnnAssign))
                    for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
                    if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"}
        for node in ast.walk(cls):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            func, target = node.func, None
            if isinstance(func.value, ast.Name) and func.value.id == "self":
                target = func.attr  # self.m(...)
                if target in own or target in assigned:
                    continue
            elif isinstance(func.value, ast.Name) and func.value.id in bases:
                target = func.attr  # Base.m(self, ...)
            elif isinstance(func.value, ast.Call) and isinstance(func.value.func, ast.Name) and func.value.func.id == "super":
                target = func.attr  # super().m(...)
            if target is None:
                continue
            for version, facts in self.api.items():
                known = set().union(*[m for m in (self.base_methods(b, facts) for b in bases) if m is not None])
                if target not in known:
                    self.problem(node, f"{cls.name}: {target}() is not defined by the class or its bases in Slicer {version}")

    # --- driver -------------------------------------------------------------------------------------------
    def check(self, source: str) -> "Checker":
        tree = ast.parse(source)
        modules = {a.asname or a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                   for a in n.names} - {"slicer", "vtk"}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                self.check_import(node)
            elif isinstance(node, ast.ClassDef):
                self.check_class(node)
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "slicer":
                attr = node.attr
                if not (attr in SLICER_TOP_LEVEL or attr.startswith(("vtk", "qMRML", "qSlicer"))):
                    self.problem(node, f"slicer.{attr} is not a known slicer attribute")
                elif attr.startswith("vtk"):
                    self.check_class_exists(node, attr)
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            func = node.func
            if isinstance(func.value, ast.Attribute) and isinstance(func.value.value, ast.Name) \
                    and func.value.value.id == "slicer" and func.value.attr == "util":
                self.check_util_call(node, func.attr)
                continue
            if not func.attr[:1].isupper():
                continue  # Python / Qt style names: not MRML methods
            if isinstance(func.value, ast.Name) and func.value.id in modules:
                continue  # a class or function of an imported Python module
            if isinstance(func.value, ast.Name) and func.value.id in ("slicer", "vtk"):
                if func.attr.startswith("vtk"):
                    self.check_class_exists(node, func.attr)  # constructor
                continue
            cls = self.receiver_class(func.value)
            if cls is None:
                self.problem(node, f"cannot tell the class of '{ast.unparse(func.value)}' for .{func.attr}(): "
                                   "name it as in RECEIVERS (test_slicer_contract.py)")
                continue
            self.check_method(node, cls, func.attr)
        return self


# ---------------------------------------------------------------------------------------------------------
# The checker itself must catch what it is for
# ---------------------------------------------------------------------------------------------------------

def _problems(api, source):
    return Checker(api).check(source).problems


def test_checker_catches_misspelt_and_version_specific_calls(api):
    assert _problems(api, "segmentationNode.CreateClosedSurfaceRepresentation()") == []
    assert _problems(api, "segmentationNode.CreateClosedSurfaceRepresentaton()")  # misspelt
    assert _problems(api, "volumeNode.GetIJKToRASMatrixx(m)")
    assert _problems(api, "segment.SetColr(1, 0, 0)")  # unlisted class: checked on slicer-core
    assert _problems(api, "scene.AddNewNodeByClass('vtkMRMLScalarVolumeNode', name='x')")  # keywords
    assert _problems(api, "mystery.DoSomething()")  # unknown receiver
    newer = _problems(api, "volumeNode.IsIJKCoordinateSystemRightHanded()")  # added in 5.8
    assert len(newer) == 1 and "5.6.2" in newer[0] and "5.8.1" not in newer[0]
    assert _problems(api, "slicer.util.arrayFromVolumee(volumeNode)")
    blocking = _problems(api, "slicer.util.launchConsoleProcess(args, blocking=False)")
    assert len(blocking) == 3 and not any("5.13.0-dev" in p for p in blocking)
    assert _problems(api, "slicer.util.launchConsoleProcess(args, updateEnvironment=env, cwd=d)") == []
    assert _problems(api, "slicer.util.errorDisplay('x', windowTitle='t', detailedText='d')") == []
    assert _problems(api, "slicer.util.loadUI(a, b)")  # too many positional arguments
    assert _problems(api, "from slicer.parameterNodeWrapper import parameterNodeWrapper, Choice") == []
    assert _problems(api, "from slicer.parameterNodeWrapper import parameterNodeWraper")
    assert _problems(api, "from slicer.ScriptedLoadableModule import ScriptedLoadableModuleWidgett")
    widget = ("from slicer.ScriptedLoadableModule import ScriptedLoadableModuleWidget\n"
              "class W(ScriptedLoadableModuleWidget):\n"
              "    def setup(self):\n"
              "        ScriptedLoadableModuleWidget.setup(self)\n"
              "        self.resourcePath('UI/x.ui')\n"
              "        self.resourcePathh('UI/x.ui')\n")
    assert len(_problems(api, widget)) == len(VERSIONS)


# ---------------------------------------------------------------------------------------------------------
# The module against the API of every claimed release
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", SLICER_CALLING_FILES, ids=lambda p: p.name)
def test_slicer_calls_exist_in_every_claimed_release(api, path):
    checker = Checker(api, path.name).check(path.read_text())
    assert not checker.problems, "\n".join(checker.problems)
    if checker.unverifiable:
        print(f"{path.name}: checked on the installed slicer-core only (not in the API file):",
              sorted(set(checker.unverifiable)))


def _slicer_loaded_files() -> list[Path]:
    return [MODULE_FILE] + sorted(LIB_DIR.glob("*.py")) + sorted(CORE_DIR.rglob("*.py"))


@pytest.mark.parametrize("path", _slicer_loaded_files(), ids=lambda p: p.relative_to(MODULE_DIR).as_posix())
def test_python39_syntax(path):
    """Slicer 5.6 / 5.8 run Python 3.9: no newer syntax in anything the module or its process loads."""
    source = path.read_text()
    tree = ast.parse(source, feature_version=(3, 9))
    future = any(isinstance(n, ast.ImportFrom) and n.module == "__future__" and any(a.name == "annotations" for a in n.names)
                 for n in tree.body)
    if future:
        return
    annotations = [n.annotation for n in ast.walk(tree) if isinstance(n, (ast.arg, ast.AnnAssign)) and n.annotation is not None]
    annotations += [n.returns for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.returns]
    for annotation in annotations:
        for sub in ast.walk(annotation):
            assert not (isinstance(sub, ast.BinOp) and isinstance(sub.op, ast.BitOr)), \
                f"{path.name}:{sub.lineno}: 'X | Y' annotation needs 'from __future__ import annotations' on Python 3.9"


# ---------------------------------------------------------------------------------------------------------
# GUI wiring: .ui file <-> widget code <-> parameter node
# ---------------------------------------------------------------------------------------------------------

def _ui_widgets() -> dict[str, tuple[str, str | None]]:
    root = ET.parse(MODULE_DIR / "Resources" / "UI" / "MONAIUNetSeg.ui").getroot()
    widgets = {}
    for w in root.iter("widget"):
        param = None
        for prop in w.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                param = prop.findtext("string")
        widgets[w.get("name")] = (w.get("class"), param)
    return widgets


def test_ui_file_matches_widget_code_and_parameter_node():
    widgets = _ui_widgets()
    tree = ast.parse(MODULE_FILE.read_text())
    used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Attribute)
            and n.value.attr == "ui" and isinstance(n.value.value, ast.Name) and n.value.value.id == "self"}
    assert used and used <= set(widgets), f"self.ui names missing from the .ui file: {sorted(used - set(widgets))}"
    params = {}
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "MONAIUNetSegParameterNode"):
        params = {s.target.id: ast.unparse(s.annotation) for s in cls.body if isinstance(s, ast.AnnAssign)}
    assert params, "MONAIUNetSegParameterNode not found"
    bound = {param: cls for cls, param in widgets.values() if param}
    assert set(bound) == set(params), f"GUI-bound parameters {sorted(bound)} != parameter node {sorted(params)}"
    for name, annotation in params.items():
        widget_class = bound[name]
        if annotation.startswith("vtkMRML"):
            assert widget_class == "qMRMLNodeComboBox", name
        elif annotation == "bool":
            assert widget_class == "QCheckBox", name
        elif "Choice" in annotation:
            assert widget_class == "QComboBox", name  # parameterNodeWrapper connects str+Choice to exactly QComboBox
        elif annotation == "pathlib.Path":
            assert widget_class == "ctkPathLineEdit", name  # the Path connector binds exactly ctkPathLineEdit
    for required in ("segmentButton", "segmentAllButton", "cancelButton", "progressBar", "logTextEdit", "volumeLabel"):
        assert required in widgets, required


def test_extension_cmake_names_scripts_and_resources():
    text = (MODULE_DIR / "CMakeLists.txt").read_text()
    assert "slicerMacroBuildScriptedModule" in text
    assert "${MODULE_NAME}.py" in text
    # every glue and core file ships (picked up by the globs)
    assert "file(GLOB _glue_scripts RELATIVE ${CMAKE_CURRENT_SOURCE_DIR} ${MODULE_NAME}Lib/*.py)" in text
    assert "file(GLOB_RECURSE _core_scripts RELATIVE ${CMAKE_CURRENT_SOURCE_DIR} monaiunetseg/*.py)" in text
    assert "list(APPEND MODULE_PYTHON_SCRIPTS ${_glue_scripts} ${_core_scripts})" in text
    assert not list(LIB_DIR.glob("*/*.py")), "the glue is flat: subfolders would need their own glob"
    resources = re.findall(r"^\s+(Resources/\S+)$", text, flags=re.M)
    assert resources, "no resources listed"
    for resource in resources:
        assert (MODULE_DIR / resource.replace("${MODULE_NAME}", "MONAIUNetSeg")).is_file(), resource
    top = (REPO / "CMakeLists.txt").read_text()
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert re.search(rf"set\({key} ", top), key
    assert 'set(EXTENSION_CATEGORY "Segmentation")' in top
    # No invented addresses: every URL is the publisher's placeholder (a reserved .invalid host) plus a path to a
    # file that is in the repository.
    code = "\n".join(line for line in top.splitlines() if not line.lstrip().startswith("#"))
    urls = re.findall(r"https?://[^\s\")]+", code)
    assert urls and all(u.startswith("https://example.invalid/PUBLISHER-SETS-THIS/") for u in urls), urls
    for key in ("EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        (value,) = re.findall(rf'set\({key} "\$\{{MONAIUNETSEG_RAW_URL\}}/([^"]+)"\)', top)
        assert (REPO / value).is_file(), (key, value)
    assert re.search(r'set\(EXTENSION_HOMEPAGE "\$\{MONAIUNETSEG_REPOSITORY_URL\}#readme"\)', top)
    assert "find_package(Slicer REQUIRED)" in top and "add_subdirectory(MONAIUNetSeg)" in top
    assert "Slicer_EXTENSION_GENERATE_CONFIG" in top and "Slicer_EXTENSION_CPACK" in top


def test_icon_is_a_128_png():
    data = (MODULE_DIR / "Resources" / "Icons" / "MONAIUNetSeg.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (128, 128)


def test_module_classes_present():
    tree = ast.parse(MODULE_FILE.read_text())
    classes = {n.name: [ast.unparse(b) for b in n.bases] for n in tree.body if isinstance(n, ast.ClassDef)}
    assert classes["MONAIUNetSeg"] == ["ScriptedLoadableModule"]
    assert classes["MONAIUNetSegWidget"][0] == "ScriptedLoadableModuleWidget"
    # Slicer's base first; the work itself comes from MONAIUNetSegLib.logic (the module file stays GUI wiring)
    assert classes["MONAIUNetSegLogic"] == ["ScriptedLoadableModuleLogic", "logic.Logic"]
    assert classes["MONAIUNetSegTest"] == ["ScriptedLoadableModuleTest"]


def test_every_weights_file_of_the_model_sets_is_packaged():
    """The pip package (setup.py package_data) and the Slicer extension (CMake) ship every weights file that a
    model set of configs/inference.json names: a default ensemble must not work only from a source checkout."""
    import fnmatch

    from monaiunetseg.model.bundle import read_spec

    spec = read_spec(REPO / "monai_bundle")
    files = sorted({p.relative_to(spec.root).as_posix() for paths in spec.models.values() for p in paths})
    assert files and all((spec.root / f).is_file() for f in files)
    setup_text = (REPO / "setup.py").read_text()
    patterns = re.findall(r'"(models/[^"]+)"', setup_text)
    cmake = (MODULE_DIR / "CMakeLists.txt").read_text()
    cmake_patterns = re.findall(r"(models/[^\s)]+)", cmake)
    for f in files:
        assert any(fnmatch.fnmatch(f, pat) for pat in patterns), f"{f} not in setup.py package_data {patterns}"
        assert any(fnmatch.fnmatch(f, pat.replace("${_bundle_source_dir}/", "")) for pat in cmake_patterns), \
            f"{f} not installed by MONAIUNetSeg/CMakeLists.txt {cmake_patterns}"
