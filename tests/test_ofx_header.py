"""plugins/ofx_shim/ofx_min.h against the official OpenFX 1.5.1 headers.

The official headers (BSD-3-Clause) are not vendored: this project commits no code
taken from other repositories (docs/hosts.md section 2.4). Our header declares the
same names instead, and this test keeps them identical, compiled by the real C
compiler: every constant the header declares must be in the table below with the
official value, and every struct must have the official members in the official
order at the offsets the platform's C layout gives them (computed with ctypes from
the official member types). The tables were written from ofxCore.h,
ofxImageEffect.h, ofxProperty.h, ofxParam.h and ofxMessage.h of OpenFX 1.5.1.
"""

from __future__ import annotations

import ctypes as C
import re
import shutil
import subprocess

import pytest

from host_bridge.ofx import find_compiler, source_dir

pytestmark = pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")),
                                reason="needs a C compiler")

HEADER = source_dir() / "ofx_min.h"

#: name -> official value (ofxCore.h, ofxImageEffect.h, ofxProperty.h, ofxParam.h,
#: ofxMessage.h; OpenFX 1.5.1)
OFFICIAL = {
    "kOfxStatOK": 0,
    "kOfxStatFailed": 1,
    "kOfxStatErrFatal": 2,
    "kOfxStatErrUnknown": 3,
    "kOfxStatErrMissingHostFeature": 4,
    "kOfxStatErrUnsupported": 5,
    "kOfxStatErrExists": 6,
    "kOfxStatErrFormat": 7,
    "kOfxStatErrMemory": 8,
    "kOfxStatErrBadHandle": 9,
    "kOfxStatErrBadIndex": 10,
    "kOfxStatErrValue": 11,
    "kOfxStatReplyYes": 12,
    "kOfxStatReplyNo": 13,
    "kOfxStatReplyDefault": 14,
    "kOfxStatErrImageFormat": 1000,
    "kOfxPropertySuite": "OfxPropertySuite",
    "kOfxImageEffectSuite": "OfxImageEffectSuite",
    "kOfxParameterSuite": "OfxParameterSuite",
    "kOfxMessageSuite": "OfxMessageSuite",
    "kOfxMessageError": "OfxMessageError",
    "kOfxMessageWarning": "OfxMessageWarning",
    "kOfxMessageMessage": "OfxMessageMessage",
    "kOfxMessageLog": "OfxMessageLog",
    "kOfxActionLoad": "OfxActionLoad",
    "kOfxActionUnload": "OfxActionUnload",
    "kOfxActionDescribe": "OfxActionDescribe",
    "kOfxActionCreateInstance": "OfxActionCreateInstance",
    "kOfxActionDestroyInstance": "OfxActionDestroyInstance",
    "kOfxActionInstanceChanged": "OfxActionInstanceChanged",
    "kOfxActionPurgeCaches": "OfxActionPurgeCaches",
    "kOfxImageEffectActionDescribeInContext": "OfxImageEffectActionDescribeInContext",
    "kOfxImageEffectActionRender": "OfxImageEffectActionRender",
    "kOfxImageEffectActionIsIdentity": "OfxImageEffectActionIsIdentity",
    "kOfxImageEffectActionGetClipPreferences": "OfxImageEffectActionGetClipPreferences",
    "kOfxImageEffectActionBeginSequenceRender":
        "OfxImageEffectActionBeginSequenceRender",
    "kOfxImageEffectActionEndSequenceRender": "OfxImageEffectActionEndSequenceRender",
    "kOfxImageEffectPluginApi": "OfxImageEffectPluginAPI",
    "kOfxImageEffectPluginApiVersion": 1,
    "kOfxPropName": "OfxPropName",
    "kOfxPropLabel": "OfxPropLabel",
    "kOfxPropTime": "OfxPropTime",
    "kOfxPropType": "OfxPropType",
    "kOfxPluginPropFilePath": "OfxPluginPropFilePath",
    "kOfxImageEffectPluginPropGrouping": "OfxImageEffectPluginPropGrouping",
    "kOfxImageEffectPropSupportedContexts": "OfxImageEffectPropSupportedContexts",
    "kOfxImageEffectContextFilter": "OfxImageEffectContextFilter",
    "kOfxImageEffectContextGeneral": "OfxImageEffectContextGeneral",
    "kOfxImageEffectPropContext": "OfxImageEffectPropContext",
    "kOfxImageEffectPropSupportedPixelDepths": "OfxImageEffectPropSupportedPixelDepths",
    "kOfxImageEffectPropSupportsTiles": "OfxImageEffectPropSupportsTiles",
    "kOfxImageEffectPropSupportsMultiResolution":
        "OfxImageEffectPropSupportsMultiResolution",
    "kOfxImageEffectPropTemporalClipAccess": "OfxImageEffectPropTemporalClipAccess",
    "kOfxImageEffectPluginRenderThreadSafety": "OfxImageEffectPluginRenderThreadSafety",
    "kOfxImageEffectRenderUnsafe": "OfxImageEffectRenderUnsafe",
    "kOfxImageEffectRenderInstanceSafe": "OfxImageEffectRenderInstanceSafe",
    "kOfxImageEffectRenderFullySafe": "OfxImageEffectRenderFullySafe",
    "kOfxImageEffectPluginPropHostFrameThreading":
        "OfxImageEffectPluginPropHostFrameThreading",
    "kOfxImageEffectPropSupportedComponents": "OfxImageEffectPropSupportedComponents",
    "kOfxImageEffectPropComponents": "OfxImageEffectPropComponents",
    "kOfxImageComponentRGBA": "OfxImageComponentRGBA",
    "kOfxImageComponentRGB": "OfxImageComponentRGB",
    "kOfxImageComponentAlpha": "OfxImageComponentAlpha",
    "kOfxImageEffectPropPixelDepth": "OfxImageEffectPropPixelDepth",
    "kOfxBitDepthByte": "OfxBitDepthByte",
    "kOfxBitDepthShort": "OfxBitDepthShort",
    "kOfxBitDepthFloat": "OfxBitDepthFloat",
    "kOfxImageEffectPropPreMultiplication": "OfxImageEffectPropPreMultiplication",
    "kOfxImageOpaque": "OfxImageOpaque",
    "kOfxImagePreMultiplied": "OfxImageAlphaPremultiplied",
    "kOfxImageUnPreMultiplied": "OfxImageAlphaUnPremultiplied",
    "kOfxImageEffectPropRenderWindow": "OfxImageEffectPropRenderWindow",
    "kOfxImageEffectPropRenderScale": "OfxImageEffectPropRenderScale",
    "kOfxImageEffectPropRenderQualityDraft": "OfxImageEffectPropRenderQualityDraft",
    "kOfxImageEffectPropInteractiveRenderStatus":
        "OfxImageEffectPropInteractiveRenderStatus",
    "kOfxImageEffectPropSequentialRenderStatus":
        "OfxImageEffectPropSequentialRenderStatus",
    "kOfxImagePropData": "OfxImagePropData",
    "kOfxImagePropBounds": "OfxImagePropBounds",
    "kOfxImagePropRowBytes": "OfxImagePropRowBytes",
    "kOfxImageClipPropOptional": "OfxImageClipPropOptional",
    "kOfxImageEffectSimpleSourceClipName": "Source",
    "kOfxImageEffectOutputClipName": "Output",
    "kOfxParamTypeInteger": "OfxParamTypeInteger",
    "kOfxParamTypeDouble": "OfxParamTypeDouble",
    "kOfxParamTypeBoolean": "OfxParamTypeBoolean",
    "kOfxParamTypeChoice": "OfxParamTypeChoice",
    "kOfxParamTypeString": "OfxParamTypeString",
    "kOfxParamPropDefault": "OfxParamPropDefault",
    "kOfxParamPropHint": "OfxParamPropHint",
    "kOfxParamPropAnimates": "OfxParamPropAnimates",
    "kOfxParamPropChoiceOption": "OfxParamPropChoiceOption",
    "kOfxParamPropMin": "OfxParamPropMin",
    "kOfxParamPropMax": "OfxParamPropMax",
    "kOfxParamPropDisplayMin": "OfxParamPropDisplayMin",
    "kOfxParamPropDisplayMax": "OfxParamPropDisplayMax",
    "kOfxParamPropStringMode": "OfxParamPropStringMode",
    "kOfxParamStringIsSingleLine": "OfxParamStringIsSingleLine",
    "kOfxParamStringIsDirectoryPath": "OfxParamStringIsDirectoryPath",
    "kOfxParamPropStringFilePathExists": "OfxParamPropStringFilePathExists",
}

FN = C.c_void_p  # a function pointer: only its size and alignment matter here
#: struct -> official members in order, with their C types
STRUCTS: dict[str, list[tuple[str, type]]] = {
    "OfxRectI": [(m, C.c_int) for m in ("x1", "y1", "x2", "y2")],
    "OfxRectD": [(m, C.c_double) for m in ("x1", "y1", "x2", "y2")],
    "OfxRangeD": [("min", C.c_double), ("max", C.c_double)],
    "OfxPointD": [("x", C.c_double), ("y", C.c_double)],
    "OfxHost": [("host", C.c_void_p), ("fetchSuite", FN)],
    "OfxPlugin": [("pluginApi", C.c_char_p), ("apiVersion", C.c_int),
                  ("pluginIdentifier", C.c_char_p), ("pluginVersionMajor", C.c_uint),
                  ("pluginVersionMinor", C.c_uint), ("setHost", FN),
                  ("mainEntry", FN)],
    "OfxPropertySuiteV1": [(m, FN) for m in (
        "propSetPointer", "propSetString", "propSetDouble", "propSetInt",
        "propSetPointerN", "propSetStringN", "propSetDoubleN", "propSetIntN",
        "propGetPointer", "propGetString", "propGetDouble", "propGetInt",
        "propGetPointerN", "propGetStringN", "propGetDoubleN", "propGetIntN",
        "propReset", "propGetDimension")],
    "OfxImageEffectSuiteV1": [(m, FN) for m in (
        "getPropertySet", "getParamSet", "clipDefine", "clipGetHandle",
        "clipGetPropertySet", "clipGetImage", "clipReleaseImage",
        "clipGetRegionOfDefinition", "abort", "imageMemoryAlloc", "imageMemoryFree",
        "imageMemoryLock", "imageMemoryUnlock")],
    "OfxParameterSuiteV1": [(m, FN) for m in (
        "paramDefine", "paramGetHandle", "paramSetGetPropertySet",
        "paramGetPropertySet", "paramGetValue", "paramGetValueAtTime",
        "paramGetDerivative", "paramGetIntegral", "paramSetValue",
        "paramSetValueAtTime", "paramGetNumKeys", "paramGetKeyTime",
        "paramGetKeyIndex", "paramDeleteKey", "paramDeleteAllKeys", "paramCopy",
        "paramEditBegin", "paramEditEnd")],
    "OfxMessageSuiteV1": [("message", FN)],
    "OfxMessageSuiteV2": [("message", FN), ("setPersistentMessage", FN),
                          ("clearPersistentMessage", FN)],
}
#: typedefs -> official size
TYPES = {"OfxStatus": C.sizeof(C.c_int), "OfxTime": C.sizeof(C.c_double)}
#: what the header defines that is not an OpenFX name: our export macro and guard
OURS = {"FACESTITCH_OFX_MIN_H", "OFX_EXPORT"}


def declared() -> set[str]:
    return set(re.findall(r"^\s*#\s*define\s+(\w+)", HEADER.read_text(), re.M))


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict[str, str]:
    """NAME -> value printed by a program compiled against ofx_min.h."""
    lines = []
    for name, value in OFFICIAL.items():
        if isinstance(value, str):
            lines.append(f'printf("C %s=%s\\n", "{name}", {name});')
        else:
            lines.append(f'printf("C %s=%d\\n", "{name}", (int)({name}));')
    for struct, members in STRUCTS.items():
        lines.append(f'printf("S {struct}=%zu\\n", sizeof({struct}));')
        for member, _ in members:
            lines.append(f'printf("O {struct}.{member}=%zu\\n", '
                         f'offsetof({struct}, {member}));')
    for typedef in TYPES:
        lines.append(f'printf("S {typedef}=%zu\\n", sizeof({typedef}));')
    folder = tmp_path_factory.mktemp("ofxhdr")
    program = folder / "pin.c"
    program.write_text('#include <stddef.h>\n#include <stdio.h>\n#include "ofx_min.h"\n'
                       "int main(void)\n{\n    " + "\n    ".join(lines)
                       + "\n    return 0;\n}\n")
    exe = folder / "pin"
    subprocess.run([find_compiler(), "-std=c11", "-Wall", "-Werror", "-I",
                    str(HEADER.parent), "-o", str(exe), str(program)], check=True,
                   capture_output=True, text=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return dict(line[2:].split("=", 1) for line in out.splitlines())


def test_every_declared_name_is_an_official_one():
    assert declared() - OURS == set(OFFICIAL)


def test_constants_have_the_official_values(compiled):
    wrong = {name: compiled[name] for name, value in OFFICIAL.items()
             if compiled[name] != str(value)}
    assert wrong == {}


@pytest.mark.parametrize("struct", list(STRUCTS))
def test_structs_have_the_official_layout(compiled, struct):
    layout = type(struct, (C.Structure,), {"_fields_": STRUCTS[struct]})
    for member, _ in STRUCTS[struct]:
        assert int(compiled[f"{struct}.{member}"]) == getattr(layout, member).offset, \
            member
    assert int(compiled[struct]) == C.sizeof(layout)


def test_typedefs_have_the_official_sizes(compiled):
    assert {t: int(compiled[t]) for t in TYPES} == TYPES
