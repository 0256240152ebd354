"""A small OpenFX image-effect host in Python ctypes, for testing the FaceStitch shim.

Pattern after davebarkeruk/pyofx (docs/hosts.md "Testing an OpenFX plugin without a
host"): property sets are Python dicts behind
C callbacks, handles are small integers the plugin passes back to us, images are numpy
arrays whose buffers we hand to the plugin. It implements what the OpenFX 1.5
specification asks of a host for a Filter-context effect: the property, image-effect,
parameter and message suites (message V1 and V2, persistent messages), and the
actions Load, Describe, DescribeInContext, CreateInstance, Render, DestroyInstance,
Unload. Render takes the arguments a host varies (render scale, draft quality,
interactive status, render window), and may be called from several threads at once
(each call's images are its own), as a host with HostFrameThreading does.

``paramGetValue``/``paramGetValueAtTime`` are variadic in C. On x86-64 System V (and
Windows x64) a variadic pointer argument travels in the same register as a fixed one,
so a fixed-signature callback ``(handle, [time,] void *out)`` receives it correctly;
this host is therefore for x86-64 test machines (Apple arm64 passes varargs on the
stack).

Usage::

    host = OfxTestHost(binary)
    host.load()
    host.describe()
    inst = host.create_instance({"mode": 1, "resultsFolder": str(folder)})
    out = inst.render(time=12.0, source=rgba)   # HxWx4, top row first
    inst.destroy(); host.unload()
    assert not host.outstanding_images           # every fetched image released
"""

from __future__ import annotations

import ctypes as C
import itertools
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["OfxTestHost", "OfxInstance", "OfxError", "DEPTHS", "STATUS"]

STATUS = {0: "OK", 1: "Failed", 2: "ErrFatal", 3: "ErrUnknown",
          4: "ErrMissingHostFeature", 5: "ErrUnsupported", 6: "ErrExists",
          7: "ErrFormat", 8: "ErrMemory", 9: "ErrBadHandle", 10: "ErrBadIndex",
          11: "ErrValue", 12: "ReplyYes", 13: "ReplyNo", 14: "ReplyDefault",
          1000: "ErrImageFormat"}
OK, FAILED, ERR_UNKNOWN, ERR_UNSUPPORTED, ERR_BAD_HANDLE, ERR_BAD_INDEX, ERR_VALUE = (
    0, 1, 3, 5, 9, 10, 11)

#: OpenFX pixel depth -> numpy dtype
DEPTHS = {"OfxBitDepthFloat": np.float32, "OfxBitDepthShort": np.uint16,
          "OfxBitDepthByte": np.uint8}

FILTER = "OfxImageEffectContextFilter"

# ---- C types -----------------------------------------------------------------------
Status = C.c_int
VP = C.c_void_p
PVP = C.POINTER(C.c_void_p)
CP = C.c_char_p


class OfxRectD(C.Structure):
    _fields_ = [("x1", C.c_double), ("y1", C.c_double), ("x2", C.c_double),
                ("y2", C.c_double)]


FetchSuite = C.CFUNCTYPE(VP, VP, CP, C.c_int)


class OfxHostStruct(C.Structure):
    _fields_ = [("host", VP), ("fetchSuite", FetchSuite)]


MainEntry = C.CFUNCTYPE(Status, CP, VP, VP, VP)
SetHost = C.CFUNCTYPE(None, C.POINTER(OfxHostStruct))


class OfxPluginStruct(C.Structure):
    _fields_ = [("pluginApi", CP), ("apiVersion", C.c_int), ("pluginIdentifier", CP),
                ("pluginVersionMajor", C.c_uint), ("pluginVersionMinor", C.c_uint),
                ("setHost", SetHost), ("mainEntry", MainEntry)]


def _suite(name: str, members: list[tuple[str, Any]]) -> type[C.Structure]:
    """A suite struct type: members in specification order, each a CFUNCTYPE."""
    return type(name, (C.Structure,), {"_fields_": members})


_PROP_MEMBERS = [
    ("propSetPointer", C.CFUNCTYPE(Status, VP, CP, C.c_int, VP)),
    ("propSetString", C.CFUNCTYPE(Status, VP, CP, C.c_int, CP)),
    ("propSetDouble", C.CFUNCTYPE(Status, VP, CP, C.c_int, C.c_double)),
    ("propSetInt", C.CFUNCTYPE(Status, VP, CP, C.c_int, C.c_int)),
    ("propSetPointerN", C.CFUNCTYPE(Status, VP, CP, C.c_int, PVP)),
    ("propSetStringN", C.CFUNCTYPE(Status, VP, CP, C.c_int, C.POINTER(CP))),
    ("propSetDoubleN", C.CFUNCTYPE(Status, VP, CP, C.c_int, C.POINTER(C.c_double))),
    ("propSetIntN", C.CFUNCTYPE(Status, VP, CP, C.c_int, C.POINTER(C.c_int))),
    ("propGetPointer", C.CFUNCTYPE(Status, VP, CP, C.c_int, PVP)),
    ("propGetString", C.CFUNCTYPE(Status, VP, CP, C.c_int, PVP)),
    ("propGetDouble", C.CFUNCTYPE(Status, VP, CP, C.c_int, C.POINTER(C.c_double))),
    ("propGetInt", C.CFUNCTYPE(Status, VP, CP, C.c_int, C.POINTER(C.c_int))),
    ("propGetPointerN", C.CFUNCTYPE(Status, VP, CP, C.c_int, PVP)),
    ("propGetStringN", C.CFUNCTYPE(Status, VP, CP, C.c_int, PVP)),
    ("propGetDoubleN", C.CFUNCTYPE(Status, VP, CP, C.c_int, C.POINTER(C.c_double))),
    ("propGetIntN", C.CFUNCTYPE(Status, VP, CP, C.c_int, C.POINTER(C.c_int))),
    ("propReset", C.CFUNCTYPE(Status, VP, CP)),
    ("propGetDimension", C.CFUNCTYPE(Status, VP, CP, C.POINTER(C.c_int))),
]
_EFFECT_MEMBERS = [
    ("getPropertySet", C.CFUNCTYPE(Status, VP, PVP)),
    ("getParamSet", C.CFUNCTYPE(Status, VP, PVP)),
    ("clipDefine", C.CFUNCTYPE(Status, VP, CP, PVP)),
    ("clipGetHandle", C.CFUNCTYPE(Status, VP, CP, PVP, PVP)),
    ("clipGetPropertySet", C.CFUNCTYPE(Status, VP, PVP)),
    ("clipGetImage", C.CFUNCTYPE(Status, VP, C.c_double, VP, PVP)),
    ("clipReleaseImage", C.CFUNCTYPE(Status, VP)),
    ("clipGetRegionOfDefinition", C.CFUNCTYPE(Status, VP, C.c_double,
                                              C.POINTER(OfxRectD))),
    ("abort", C.CFUNCTYPE(C.c_int, VP)),
    ("imageMemoryAlloc", C.CFUNCTYPE(Status, VP, C.c_size_t, PVP)),
    ("imageMemoryFree", C.CFUNCTYPE(Status, VP)),
    ("imageMemoryLock", C.CFUNCTYPE(Status, VP, PVP)),
    ("imageMemoryUnlock", C.CFUNCTYPE(Status, VP)),
]
_PARAM_MEMBERS = [
    ("paramDefine", C.CFUNCTYPE(Status, VP, CP, CP, PVP)),
    ("paramGetHandle", C.CFUNCTYPE(Status, VP, CP, PVP, PVP)),
    ("paramSetGetPropertySet", C.CFUNCTYPE(Status, VP, PVP)),
    ("paramGetPropertySet", C.CFUNCTYPE(Status, VP, PVP)),
    ("paramGetValue", C.CFUNCTYPE(Status, VP, VP)),  # variadic: see module doc
    ("paramGetValueAtTime", C.CFUNCTYPE(Status, VP, C.c_double, VP)),
    ("paramGetDerivative", C.CFUNCTYPE(Status, VP, C.c_double, VP)),
    ("paramGetIntegral", C.CFUNCTYPE(Status, VP, C.c_double, C.c_double, VP)),
    ("paramSetValue", C.CFUNCTYPE(Status, VP, VP)),
    ("paramSetValueAtTime", C.CFUNCTYPE(Status, VP, C.c_double, VP)),
    ("paramGetNumKeys", C.CFUNCTYPE(Status, VP, C.POINTER(C.c_uint))),
    ("paramGetKeyTime", C.CFUNCTYPE(Status, VP, C.c_uint, C.POINTER(C.c_double))),
    ("paramGetKeyIndex", C.CFUNCTYPE(Status, VP, C.c_double, C.c_int,
                                     C.POINTER(C.c_int))),
    ("paramDeleteKey", C.CFUNCTYPE(Status, VP, C.c_double)),
    ("paramDeleteAllKeys", C.CFUNCTYPE(Status, VP)),
    ("paramCopy", C.CFUNCTYPE(Status, VP, VP, C.c_double, VP)),
    ("paramEditBegin", C.CFUNCTYPE(Status, VP, CP)),
    ("paramEditEnd", C.CFUNCTYPE(Status, VP)),
]
_MESSAGE_MEMBERS = [
    # message(handle, type, id, format, ...): the shim always passes ("%s", text)
    ("message", C.CFUNCTYPE(Status, VP, CP, CP, CP, CP)),
]
_MESSAGE2_MEMBERS = _MESSAGE_MEMBERS + [
    ("setPersistentMessage", C.CFUNCTYPE(Status, VP, CP, CP, CP, CP)),
    ("clearPersistentMessage", C.CFUNCTYPE(Status, VP)),
]
PropertySuite = _suite("OfxPropertySuiteV1", _PROP_MEMBERS)
ImageEffectSuite = _suite("OfxImageEffectSuiteV1", _EFFECT_MEMBERS)
ParameterSuite = _suite("OfxParameterSuiteV1", _PARAM_MEMBERS)
MessageSuite = _suite("OfxMessageSuiteV1", _MESSAGE_MEMBERS)
MessageSuiteV2 = _suite("OfxMessageSuiteV2", _MESSAGE2_MEMBERS)


class OfxError(RuntimeError):
    def __init__(self, action: str, status: int) -> None:
        super().__init__(f"{action} returned {STATUS.get(status, status)}")
        self.action = action
        self.status = status


# ---- host-side objects -------------------------------------------------------------


class PropertySet:
    """Named, typed-by-value properties; strings keep a C buffer alive for getters."""

    def __init__(self, label: str, values: dict[str, list[Any]] | None = None) -> None:
        self.label = label
        self.values: dict[str, list[Any]] = {k: list(v)
                                             for k, v in (values or {}).items()}
        self._cstrings: dict[tuple[str, int], C.Array] = {}

    def set(self, name: str, index: int, value: Any) -> None:
        vals = self.values.setdefault(name, [])
        while len(vals) <= index:
            vals.append(None)
        vals[index] = value

    def get(self, name: str, index: int) -> Any:
        return self.values[name][index]

    def cstring(self, name: str, index: int) -> int:
        """The address of a C copy of the value. A copy is kept while the value is
        unchanged: renders on other threads may still be reading it, as they may
        from a real host's storage."""
        text = str(self.values[name][index]).encode()
        buf = self._cstrings.get((name, index))
        if buf is None or buf.value != text:
            buf = self._cstrings[(name, index)] = C.create_string_buffer(text)
        return C.addressof(buf)

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"PropertySet({self.label!r}, {self.values!r})"


@dataclass
class Param:
    type: str
    props: PropertySet
    value: Any = None
    cvalue: Any = None  # C buffer for string values


@dataclass
class Clip:
    name: str
    props: PropertySet


@dataclass
class Effect:
    """A descriptor (from Describe) or an instance (from CreateInstance)."""

    props: PropertySet
    clips: dict[str, Clip] = field(default_factory=dict)
    params: dict[str, Param] = field(default_factory=dict)
    param_set_props: PropertySet = field(
        default_factory=lambda: PropertySet("paramset"))


@dataclass
class Image:
    props: PropertySet
    array: np.ndarray  # bottom row first, as OpenFX addresses it
    clip: str


class OfxTestHost:
    """Loads one ``.ofx`` binary and drives its single image-effect plugin."""

    def __init__(self, binary: str | Path, *,
                 abort_fn: Callable[[], bool] | None = None,
                 omit_suites: tuple[str, ...] = (),
                 message_versions: tuple[int, ...] = (1, 2)) -> None:
        self.binary = Path(binary)
        self.lib = C.CDLL(str(self.binary))
        self.abort_fn = abort_fn or (lambda: False)
        self.messages: list[tuple[str, str]] = []
        #: effect handle -> (type, text) of its persistent message (suite V2)
        self.persistent: dict[int, tuple[str, str]] = {}
        self.outstanding_images: dict[int, Image] = {}
        self.images_fetched = 0
        self.omit_suites = omit_suites
        self.message_versions = message_versions
        self._objects: dict[int, Any] = {}
        self._ids = itertools.count(0x1000, 0x10)
        self._lock = threading.RLock()  # renders may call back from several threads
        self._tls = threading.local()  # the render call this thread is in
        self.host_props = PropertySet("host", {
            "OfxPropName": ["org.facestitch.testhost"],
            "OfxPropLabel": ["FaceStitch test host"],
            "OfxImageEffectHostPropIsBackground": [0],
            "OfxImageEffectPropSupportsOverlays": [0],
            "OfxImageEffectPropSupportsMultiResolution": [0],
            "OfxImageEffectPropSupportsTiles": [0],
            "OfxImageEffectPropTemporalClipAccess": [0],
            "OfxImageEffectPropSupportedComponents": ["OfxImageComponentRGBA"],
            "OfxImageEffectPropSupportedContexts": [FILTER],
            "OfxImageEffectPropSupportedPixelDepths": list(DEPTHS),
            "OfxImageEffectPropSupportsMultipleClipDepths": [0],
        })
        self._build_suites()
        self._host_struct = OfxHostStruct(self._handle(self.host_props),
                                          FetchSuite(self._fetch_suite))
        self.plugin: OfxPluginStruct | None = None
        self.descriptor: Effect | None = None

    # -- handles ---------------------------------------------------------------------
    def _handle(self, obj: Any) -> int:
        with self._lock:
            for key, value in self._objects.items():
                if value is obj:
                    return key
            key = next(self._ids)
            self._objects[key] = obj
            return key

    def _obj(self, handle: int | None, kind: type | tuple[type, ...]) -> Any:
        obj = self._objects.get(handle or 0)
        if not isinstance(obj, kind):
            raise LookupError(handle)
        return obj

    # -- suites ----------------------------------------------------------------------
    def _build_suites(self) -> None:
        def guard(fn: Callable[..., int]) -> Callable[..., int]:
            def wrapped(*args: Any) -> int:
                try:
                    return fn(*args)
                except IndexError:
                    return ERR_BAD_INDEX
                except LookupError:  # unknown handle (KeyError is one too)
                    return ERR_BAD_HANDLE
            return wrapped

        def make(struct: type[C.Structure], impls: dict[str, Callable[..., Any]]):
            kwargs = {}
            for name, ftype in struct._fields_:
                impl = impls.get(name, lambda *a: ERR_UNSUPPORTED)
                kwargs[name] = ftype(guard(impl) if name != "abort" else impl)
            return struct(**kwargs)

        self.prop_suite = make(PropertySuite, self._prop_impls())
        self.effect_suite = make(ImageEffectSuite, self._effect_impls())
        self.param_suite = make(ParameterSuite, self._param_impls())
        self.message_suite = make(MessageSuite, {"message": self._message})
        self.message_suite2 = make(MessageSuiteV2, {
            "message": self._message, "setPersistentMessage": self._persistent,
            "clearPersistentMessage": self._clear_persistent})
        suites = {("OfxPropertySuite", 1): self.prop_suite,
                  ("OfxImageEffectSuite", 1): self.effect_suite,
                  ("OfxParameterSuite", 1): self.param_suite,
                  ("OfxMessageSuite", 1): self.message_suite,
                  ("OfxMessageSuite", 2): self.message_suite2}
        self.suites = {
            (name, version): suite for (name, version), suite in suites.items()
            if name not in self.omit_suites and (
                name != "OfxMessageSuite" or version in self.message_versions)}

    def _fetch_suite(self, host: int, name: bytes, version: int) -> int | None:
        suite = self.suites.get((name.decode(), version))
        return C.addressof(suite) if suite is not None else None

    def _props(self, handle: int | None) -> PropertySet:
        return self._obj(handle, PropertySet)

    def _prop_impls(self) -> dict[str, Callable[..., int]]:
        def setter(convert: Callable[[Any], Any]):
            def fn(h, name, index, value):
                self._props(h).set(name.decode(), index, convert(value))
                return OK
            return fn

        def setter_n(convert: Callable[[Any], Any]):
            def fn(h, name, count, values):
                ps = self._props(h)
                ps.values[name.decode()] = [convert(values[i]) for i in range(count)]
                return OK
            return fn

        def getter(write: Callable[[PropertySet, str, int, Any, int], None]):
            def fn(h, name, index, out):
                ps = self._props(h)
                key = name.decode()
                if key not in ps.values:
                    return ERR_UNKNOWN
                if index >= len(ps.values[key]):
                    return ERR_BAD_INDEX
                write(ps, key, index, out, 0)
                return OK
            return fn

        def getter_n(write: Callable[[PropertySet, str, int, Any, int], None]):
            def fn(h, name, count, out):
                ps = self._props(h)
                key = name.decode()
                if key not in ps.values:
                    return ERR_UNKNOWN
                if count > len(ps.values[key]):
                    return ERR_BAD_INDEX
                for i in range(count):
                    write(ps, key, i, out, i)
                return OK
            return fn

        def w_ptr(ps, key, i, out, j):
            out[j] = ps.get(key, i)

        def w_str(ps, key, i, out, j):
            out[j] = ps.cstring(key, i)

        def w_double(ps, key, i, out, j):
            out[j] = float(ps.get(key, i))

        def w_int(ps, key, i, out, j):
            out[j] = int(ps.get(key, i))

        def reset(h, name):
            self._props(h).values.pop(name.decode(), None)
            return OK

        def dimension(h, name, out):
            ps = self._props(h)
            if name.decode() not in ps.values:
                return ERR_UNKNOWN
            out[0] = len(ps.values[name.decode()])
            return OK

        return {
            "propSetPointer": setter(lambda v: v),
            "propSetString": setter(bytes.decode),
            "propSetDouble": setter(float), "propSetInt": setter(int),
            "propSetPointerN": setter_n(lambda v: v),
            "propSetStringN": setter_n(bytes.decode),
            "propSetDoubleN": setter_n(float), "propSetIntN": setter_n(int),
            "propGetPointer": getter(w_ptr), "propGetString": getter(w_str),
            "propGetDouble": getter(w_double), "propGetInt": getter(w_int),
            "propGetPointerN": getter_n(w_ptr), "propGetStringN": getter_n(w_str),
            "propGetDoubleN": getter_n(w_double), "propGetIntN": getter_n(w_int),
            "propReset": reset, "propGetDimension": dimension,
        }

    def _effect_impls(self) -> dict[str, Callable[..., int]]:
        def get_props(h, out):
            out[0] = self._handle(self._obj(h, Effect).props)
            return OK

        def get_param_set(h, out):
            # the effect doubles as param set
            out[0] = self._handle(self._obj(h, Effect))
            return OK

        def clip_define(h, name, out):
            eff = self._obj(h, Effect)
            clip = Clip(name.decode(), PropertySet(f"clip {name.decode()}"))
            eff.clips[clip.name] = clip
            if out:
                out[0] = self._handle(clip.props)
            return OK

        def clip_get_handle(h, name, out_clip, out_props):
            eff = self._obj(h, Effect)
            clip = eff.clips.get(name.decode())
            if clip is None:
                return ERR_UNKNOWN
            out_clip[0] = self._handle(clip)
            if out_props:
                out_props[0] = self._handle(clip.props)
            return OK

        def clip_props(h, out):
            out[0] = self._handle(self._obj(h, Clip).props)
            return OK

        def clip_get_image(h, time, region, out):
            clip = self._obj(h, Clip)
            call = getattr(self._tls, "render", None)
            if call is None:
                return FAILED
            image = call.image_for(clip.name, time)
            if image is None:
                return FAILED
            handle = self._handle(image.props)
            with self._lock:
                self.outstanding_images[handle] = image
                self.images_fetched += 1
            out[0] = handle
            return OK

        def clip_release(h):
            with self._lock:
                if h not in self.outstanding_images:
                    return ERR_BAD_HANDLE
                self.outstanding_images.pop(h)
                self._objects.pop(h, None)
            return OK

        def clip_rod(h, time, out):
            inst = self._tls.render
            out[0].x1, out[0].y1 = 0.0, 0.0
            out[0].x2, out[0].y2 = float(inst.width), float(inst.height)
            return OK

        def abort(h):
            return 1 if self.abort_fn() else 0

        return {"getPropertySet": get_props, "getParamSet": get_param_set,
                "clipDefine": clip_define, "clipGetHandle": clip_get_handle,
                "clipGetPropertySet": clip_props, "clipGetImage": clip_get_image,
                "clipReleaseImage": clip_release, "clipGetRegionOfDefinition": clip_rod,
                "abort": abort}

    def _param_impls(self) -> dict[str, Callable[..., int]]:
        def define(h, ptype, name, out):
            eff = self._obj(h, Effect)
            param = Param(ptype.decode(), PropertySet(f"param {name.decode()}"))
            eff.params[name.decode()] = param
            if out:
                out[0] = self._handle(param.props)
            return OK

        def get_handle(h, name, out, out_props):
            eff = self._obj(h, Effect)
            param = eff.params.get(name.decode())
            if param is None:
                return ERR_UNKNOWN
            out[0] = self._handle(param)
            if out_props:
                out_props[0] = self._handle(param.props)
            return OK

        def set_props(h, out):
            out[0] = self._handle(self._obj(h, Effect).param_set_props)
            return OK

        def param_props(h, out):
            out[0] = self._handle(self._obj(h, Param).props)
            return OK

        def write_value(param: Param, out: int) -> int:
            if not out:
                return ERR_VALUE
            if param.type in ("OfxParamTypeInteger", "OfxParamTypeChoice",
                              "OfxParamTypeBoolean"):
                C.c_int.from_address(out).value = int(param.value)
            elif param.type == "OfxParamTypeDouble":
                C.c_double.from_address(out).value = float(param.value)
            elif param.type == "OfxParamTypeString":
                text = str(param.value).encode()
                if param.cvalue is None or param.cvalue.value != text:  # see cstring
                    param.cvalue = C.create_string_buffer(text)
                C.c_void_p.from_address(out).value = C.addressof(param.cvalue)
            else:
                return ERR_UNSUPPORTED
            return OK

        def get_value(h, out):
            return write_value(self._obj(h, Param), out)

        def get_value_at_time(h, time, out):
            return write_value(self._obj(h, Param), out)

        def num_keys(h, out):
            out[0] = 0
            return OK

        return {"paramDefine": define, "paramGetHandle": get_handle,
                "paramSetGetPropertySet": set_props, "paramGetPropertySet": param_props,
                "paramGetValue": get_value, "paramGetValueAtTime": get_value_at_time,
                "paramGetNumKeys": num_keys,
                "paramEditBegin": lambda h, name: OK, "paramEditEnd": lambda h: OK}

    @staticmethod
    def _text(fmt: bytes | None, arg: bytes | None) -> str:
        text = (fmt or b"").decode()
        return (arg or b"").decode() if text == "%s" else text

    def _message(self, handle, mtype, mid, fmt, arg) -> int:
        self.messages.append(((mtype or b"").decode(), self._text(fmt, arg)))
        return OK

    def _persistent(self, handle, mtype, mid, fmt, arg) -> int:
        if not handle:
            return ERR_BAD_HANDLE
        self.persistent[handle] = ((mtype or b"").decode(), self._text(fmt, arg))
        return OK

    def _clear_persistent(self, handle) -> int:
        self.persistent.pop(handle, None)
        return OK

    # -- actions -----------------------------------------------------------------------

    def call(self, action: str, handle: int | None = None,
             in_args: PropertySet | None = None, out_args: PropertySet | None = None,
             *, check: bool = True) -> int:
        assert self.plugin is not None, "load() first"
        status = self.plugin.mainEntry(
            action.encode(), handle,
            self._handle(in_args) if in_args is not None else None,
            self._handle(out_args) if out_args is not None else None)
        if check and status not in (0, 14):  # OK or ReplyDefault
            raise OfxError(action, status)
        return status

    def load(self) -> OfxPluginStruct:
        """OfxSetHost (1.5, when exported), OfxGetPlugin(0), setHost, Load."""
        if hasattr(self.lib, "OfxSetHost"):
            self.lib.OfxSetHost.restype = C.c_int
            self.lib.OfxSetHost.argtypes = [C.POINTER(OfxHostStruct)]
            if self.lib.OfxSetHost(C.byref(self._host_struct)) != OK:
                raise OfxError("OfxSetHost", FAILED)
        self.lib.OfxGetNumberOfPlugins.restype = C.c_int
        self.lib.OfxGetPlugin.restype = C.POINTER(OfxPluginStruct)
        self.lib.OfxGetPlugin.argtypes = [C.c_int]
        if self.lib.OfxGetNumberOfPlugins() < 1:
            raise OfxError("OfxGetNumberOfPlugins", FAILED)
        self.plugin = self.lib.OfxGetPlugin(0).contents
        self.plugin.setHost(C.pointer(self._host_struct))
        self.call("OfxActionLoad")
        return self.plugin

    def describe(self, context: str = FILTER) -> Effect:
        """Describe, then DescribeInContext; returns the descriptor."""
        desc = Effect(PropertySet("descriptor", {
            "OfxPropType": ["OfxTypeImageEffect"],
            "OfxPluginPropFilePath": [str(self.binary.parents[2])],
        }))
        self.call("OfxActionDescribe", self._handle(desc))
        args = PropertySet("describeInContext",
                           {"OfxImageEffectPropContext": [context]})
        self.call("OfxImageEffectActionDescribeInContext", self._handle(desc), args)
        self.descriptor = desc
        return desc

    def create_instance(self, params: dict[str, Any] | None = None, *,
                        depth: str = "OfxBitDepthFloat",
                        premultiplication: str = "OfxImageOpaque") -> "OfxInstance":
        assert self.descriptor is not None, "describe() first"
        inst = OfxInstance(self, depth, premultiplication)
        for name, dparam in self.descriptor.params.items():
            default = dparam.props.values.get("OfxParamPropDefault", [None])[0]
            inst.effect.params[name] = Param(dparam.type, dparam.props, default)
        unknown = set(params or {}) - set(inst.effect.params)
        if unknown:
            raise KeyError(f"the plugin defines no parameter {sorted(unknown)}")
        for name, value in (params or {}).items():
            inst.effect.params[name].value = value
        for name in self.descriptor.clips:
            inst.effect.clips[name] = Clip(name, PropertySet(f"clip {name}", {
                "OfxPropName": [name],
                "OfxImageEffectPropPixelDepth": [depth],
                "OfxImageEffectPropComponents": ["OfxImageComponentRGBA"],
                "OfxImageEffectPropPreMultiplication": [premultiplication],
                "OfxImageClipPropConnected": [1],
            }))
        self.call("OfxActionCreateInstance", self._handle(inst.effect))
        return inst

    def unload(self) -> None:
        self.call("OfxActionUnload")


class RenderCall:
    """The images of one render (one frame): the host hands them to every window's
    call, from whichever thread makes it."""

    def __init__(self, instance: "OfxInstance", source: np.ndarray,
                 scale: tuple[float, float]) -> None:
        self.instance = instance
        self.source = source  # bottom row first
        self.output = np.zeros_like(source)
        self.scale = scale
        self.height, self.width = source.shape[:2]

    def image_for(self, clip: str, time: float) -> Image | None:
        arr = {"Source": self.source, "Output": self.output}.get(clip)
        if arr is None:
            return None
        h, w = arr.shape[:2]
        inst = self.instance
        props = PropertySet(f"image {clip} @{time}", {
            "OfxImagePropData": [arr.ctypes.data],
            "OfxImagePropRowBytes": [arr.strides[0]],
            "OfxImagePropBounds": [0, 0, w, h],
            "OfxImageEffectPropPixelDepth": [inst.depth],
            "OfxImageEffectPropComponents": ["OfxImageComponentRGBA"],
            "OfxImageEffectPropPreMultiplication": [inst.premultiplication],
            "OfxImagePropPixelAspectRatio": [1.0],
            "OfxImageEffectPropRenderScale": list(self.scale),
            "OfxImagePropUniqueIdentifier": [f"{clip}:{time}"],
            "OfxImagePropField": ["OfxImageFieldNone"],
        })
        return Image(props, arr, clip)


class OfxInstance:
    """One effect instance; :meth:`render` feeds a source frame and returns the
    output."""

    def __init__(self, host: OfxTestHost, depth: str, premultiplication: str) -> None:
        self.host = host
        self.depth = depth
        self.dtype = DEPTHS[depth]
        self.premultiplication = premultiplication
        self.effect = Effect(PropertySet("instance", {
            "OfxPropType": ["OfxTypeImageEffectInstance"],
            "OfxImageEffectPropContext": [FILTER],
            "OfxImageEffectPropProjectSize": [0.0, 0.0],
            "OfxImageEffectPropFrameRate": [24.0],
        }))
        self.status = 0  # of the last render

    def set_param(self, name: str, value: Any) -> None:
        self.effect.params[name].value = value

    def render(self, time: float, source: np.ndarray, *, check: bool = True,
               scale: tuple[float, float] = (1.0, 1.0), draft: int | None = None,
               interactive: int | None = 0,
               windows: list[tuple[int, int, int, int]] | None = None) -> np.ndarray:
        """Render ``source`` (HxWx4 of this instance's dtype, top row first) at
        ``time``; returns the output in the same layout.

        Args:
            scale: kOfxImageEffectPropRenderScale (the source is already at that
                scale, as a host hands it).
            draft, interactive: kOfxImageEffectPropRenderQualityDraft and
                kOfxImageEffectPropInteractiveRenderStatus; None leaves the property
                out, as a host without it does.
            windows: render windows (x1, y1, x2, y2, OpenFX coordinates) rendered
                at the same time from one thread each into one output, as a host
                does with HostFrameThreading; default the whole frame.
        """
        if source.dtype != self.dtype or source.ndim != 3 or source.shape[2] != 4:
            raise ValueError(f"source must be HxWx4 {np.dtype(self.dtype).name}")
        # OpenFX addresses rows bottom-up from bounds.y1
        call = RenderCall(self, np.ascontiguousarray(source[::-1]), scale)
        height, width = source.shape[:2]
        windows = windows or [(0, 0, width, height)]
        statuses: list[int] = [0] * len(windows)

        def one(i: int) -> None:
            args = PropertySet("render", {
                "OfxPropTime": [float(time)],
                "OfxImageEffectPropFieldToRender": ["OfxImageFieldNone"],
                "OfxImageEffectPropRenderWindow": list(windows[i]),
                "OfxImageEffectPropRenderScale": list(scale),
                "OfxImageEffectPropSequentialRenderStatus": [0],
            })
            if interactive is not None:
                args.set("OfxImageEffectPropInteractiveRenderStatus", 0, interactive)
            if draft is not None:
                args.set("OfxImageEffectPropRenderQualityDraft", 0, draft)
            self.host._tls.render = call
            try:
                statuses[i] = self.host.call(
                    "OfxImageEffectActionRender", self.host._handle(self.effect), args,
                    check=False)
            finally:
                self.host._tls.render = None

        if len(windows) == 1:
            one(0)
        else:
            threads = [threading.Thread(target=one, args=(i,))
                       for i in range(len(windows))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        self.status = next((st for st in statuses if st not in (0, 14)), 0)
        if check and self.status:
            raise OfxError("OfxImageEffectActionRender", self.status)
        return call.output[::-1].copy()

    def destroy(self) -> None:
        self.host.call("OfxActionDestroyInstance", self.host._handle(self.effect))
