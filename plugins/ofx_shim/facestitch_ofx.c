/*
 * facestitch_ofx.c - the FaceStitch OpenFX shim (C11, no libraries beyond libc/libm).
 *
 * Two modes, chosen by the "mode" parameter:
 *
 *   Export     passes the source through and writes each rendered source frame to
 *              <exportFolder>/frame.<N:07d>.pam, N = round(time) + frameOffset, as a
 *              16-bit PAM (TUPLTYPE RGB_ALPHA, big-endian samples, top row first).
 *              This is how a job gets frames when the host gives no media path
 *              (docs/hosts.md "OpenFX facts": no OpenFX property carries one).
 *   Composite  reads <resultsFolder>/<resultName>.<N:07d>.pam (the engine writes these
 *              when Job.output.format is "pam16"; straight alpha) and composites it over
 *              the source with the "opacity" parameter. Where the file is missing,
 *              truncated or malformed, the source passes through untouched.
 *
 * Source images are treated as premultiplied (the OpenFX default for RGBA); the result
 * is straight, so out = res.rgb * a + src.rgb * (1 - a), out.a = a + src.a * (1 - a),
 * with a = res.a * opacity. For an opaque source this is the usual straight "over".
 *
 * Export writes only what a final render at full resolution produces: a draft or
 * interactive render (scrubbing, tweaking a parameter) passes the picture through and
 * writes nothing, and a render at a render scale other than 1 (a proxy) is refused
 * with a message on the effect, so that a job never gets small frames.
 *
 * Threads: the shim starts none of its own, and Render keeps no state between calls
 * (the globals are written in Load and Unload only, every buffer belongs to the call,
 * temporary file names are unique per call). So the host may run any number of
 * renders at once, on one instance or several (kOfxImageEffectRenderFullySafe), and
 * may split one frame into windows rendered at the same time (HostFrameThreading 1).
 * Two Export renders of the same frame write the same bytes, each through its own
 * temporary file renamed into place.
 *
 * Structure follows the OpenFX examples (one exit path in C): one entry point
 * dispatching each action to one small static function, suites fetched and checked in
 * Load, abort() polled once per row, and one cleanup path in Render that releases
 * every image it fetched. Render never blocks on the engine: it only reads and
 * writes small files.
 */
#define _POSIX_C_SOURCE 200809L /* strerror_r (the thread-safe strerror) */

#include "ofx_min.h"

#include <errno.h>
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(_WIN32)
#include <process.h>
#include <windows.h> /* MoveFileExA */
#define fs_getpid _getpid
#define PATH_SEP '\\'
#else
#include <unistd.h>
#define fs_getpid getpid
#define PATH_SEP '/'
#endif

#define PLUGIN_ID "org.facestitch.ofxshim"
#define PLUGIN_VERSION_MAJOR 1
#define PLUGIN_VERSION_MINOR 0
#define PATH_MAX_LEN 4096
#define PATH_BUF (PATH_MAX_LEN + 300) /* folder + name + number */

/* parameter names (also read by tests/ofx_host.py and docs/hosts.md) */
#define P_MODE "mode"
#define P_EXPORT_FOLDER "exportFolder"
#define P_RESULTS_FOLDER "resultsFolder"
#define P_RESULT_NAME "resultName"
#define P_FRAME_OFFSET "frameOffset"
#define P_OPACITY "opacity"

enum { MODE_EXPORT = 0, MODE_COMPOSITE = 1 };

static OfxHost *gHost = NULL;
static const OfxPropertySuiteV1 *gProp = NULL;
static const OfxImageEffectSuiteV1 *gEffect = NULL;
static const OfxParameterSuiteV1 *gParam = NULL;
static const OfxMessageSuiteV1 *gMessage = NULL;   /* optional */
static const OfxMessageSuiteV2 *gMessage2 = NULL;  /* optional: persistent messages */
static atomic_ulong gTempCounter;                  /* unique temporary file names */
static atomic_int gScaleWarned;                    /* V1 hosts: say it once per run */

/* One fetched image: its property set (to release) and what we read from it. */
typedef struct Image {
    OfxPropertySetHandle props;
    unsigned char *data;
    int rowBytes;
    OfxRectI bounds;
    int bytesPerChannel; /* 1 (byte), 2 (short), 4 (float) */
} Image;

/* A decoded PAM result: width x height x 4 uint16 samples, top row first. */
typedef struct Pam {
    int width, height;
    uint16_t *px;
} Pam;

/* What the host asks of one Render call. */
typedef struct RenderArgs {
    OfxTime time;
    OfxRectI window;
    double scale[2]; /* render scale: 1 at full resolution, 0.5 for a half proxy */
    int draft;       /* kOfxImageEffectPropRenderQualityDraft (1.4; 0 if absent) */
    int interactive; /* kOfxImageEffectPropInteractiveRenderStatus (0 if absent) */
} RenderArgs;

typedef struct Settings {
    int mode;
    int frameOffset;
    double opacity;
    char exportFolder[PATH_MAX_LEN];
    char resultsFolder[PATH_MAX_LEN];
    char resultName[256];
} Settings;

/* ---- small helpers ----------------------------------------------------------------- */

static void post_message(void *handle, const char *type, const char *text)
{
    if (gMessage && gMessage->message)
        gMessage->message(handle, type, PLUGIN_ID, "%s", text);
}

/* A message that stays on the effect until cleared (Message suite V2); hosts with V1
   only get one ordinary message per run instead of one per frame. */
static void post_persistent(void *handle, const char *type, const char *text)
{
    if (gMessage2 && gMessage2->setPersistentMessage)
        gMessage2->setPersistentMessage(handle, type, PLUGIN_ID, "%s", text);
    else if (atomic_exchange(&gScaleWarned, 1) == 0)
        post_message(handle, type, text);
}

static void clear_persistent(void *handle)
{
    if (gMessage2 && gMessage2->clearPersistentMessage)
        gMessage2->clearPersistentMessage(handle);
    atomic_store(&gScaleWarned, 0);
}

/* strerror() may share one buffer between threads; this does not. */
static const char *error_text(int err, char *buf, size_t size)
{
#if defined(_WIN32)
    if (strerror_s(buf, size, err) != 0)
#else
    if (strerror_r(err, buf, size) != 0)
#endif
        snprintf(buf, size, "error %d", err);
    return buf;
}

static double clamp01(double v)
{
    return v < 0.0 ? 0.0 : (v > 1.0 ? 1.0 : v);
}

static long frame_number(double time, int offset)
{
    return (long)floor(time + 0.5) + (long)offset;
}

/* Copy a host string into buf; an over-long value is refused (empty). */
static void copy_string(char *buf, size_t size, const char *value)
{
    buf[0] = '\0';
    if (value && strlen(value) < size)
        memcpy(buf, value, strlen(value) + 1);
}

/* A plain file-name prefix: no separators, no "..", not empty. */
static int valid_name(const char *name)
{
    if (!name[0] || strstr(name, ".."))
        return 0;
    return strpbrk(name, "/\\:") == NULL;
}

static int build_path(char *out, size_t size, const char *folder, const char *name,
                      long number)
{
    size_t len = strlen(folder);
    int n;
    if (len == 0 || number < 0)
        return 0;
    if (folder[len - 1] == '/' || folder[len - 1] == '\\')
        n = snprintf(out, size, "%s%s.%07ld.pam", folder, name, number);
    else
        n = snprintf(out, size, "%s%c%s.%07ld.pam", folder, PATH_SEP, name, number);
    return n > 0 && (size_t)n < size;
}

/* ---- pixels -------------------------------------------------------------------------- */

static void *pixel_address(const Image *im, int x, int y)
{
    return im->data + (ptrdiff_t)(y - im->bounds.y1) * im->rowBytes +
           (ptrdiff_t)(x - im->bounds.x1) * 4 * im->bytesPerChannel;
}

static void load_px(const Image *im, int x, int y, double out[4])
{
    const void *p = pixel_address(im, x, y);
    int c;
    for (c = 0; c < 4; c++) {
        if (im->bytesPerChannel == 4)
            out[c] = ((const float *)p)[c];
        else if (im->bytesPerChannel == 2)
            out[c] = ((const uint16_t *)p)[c] / 65535.0;
        else
            out[c] = ((const uint8_t *)p)[c] / 255.0;
    }
}

static void store_px(const Image *im, int x, int y, const double in[4])
{
    void *p = pixel_address(im, x, y);
    int c;
    for (c = 0; c < 4; c++) {
        if (im->bytesPerChannel == 4)
            ((float *)p)[c] = (float)in[c];
        else if (im->bytesPerChannel == 2)
            ((uint16_t *)p)[c] = (uint16_t)(clamp01(in[c]) * 65535.0 + 0.5);
        else
            ((uint8_t *)p)[c] = (uint8_t)(clamp01(in[c]) * 255.0 + 0.5);
    }
}

/* Same-depth copy of one pixel, bit exact (no float round trip). */
static void copy_px(const Image *src, Image *dst, int x, int y)
{
    memcpy(pixel_address(dst, x, y), pixel_address(src, x, y),
           (size_t)(4 * src->bytesPerChannel));
}

/* One source channel as a 16-bit sample (8-bit scales by 257, exactly). */
static uint16_t sample16(const Image *im, int x, int y, int c)
{
    const void *p = pixel_address(im, x, y);
    if (im->bytesPerChannel == 4)
        return (uint16_t)(clamp01(((const float *)p)[c]) * 65535.0 + 0.5);
    if (im->bytesPerChannel == 2)
        return ((const uint16_t *)p)[c];
    return (uint16_t)(((const uint8_t *)p)[c] * 257u);
}

/* ---- images ---------------------------------------------------------------------------- */

static OfxStatus fetch_image(OfxImageEffectHandle fx, const char *clipName, OfxTime time,
                             Image *im)
{
    OfxImageClipHandle clip = NULL;
    char *depth = NULL, *components = NULL;
    void *data = NULL;

    if (gEffect->clipGetHandle(fx, clipName, &clip, NULL) != kOfxStatOK)
        return kOfxStatErrBadHandle;
    if (gEffect->clipGetImage(clip, time, NULL, &im->props) != kOfxStatOK) {
        im->props = NULL;
        return kOfxStatFailed;
    }
    gProp->propGetPointer(im->props, kOfxImagePropData, 0, &data);
    gProp->propGetInt(im->props, kOfxImagePropRowBytes, 0, &im->rowBytes);
    gProp->propGetIntN(im->props, kOfxImagePropBounds, 4, &im->bounds.x1);
    gProp->propGetString(im->props, kOfxImageEffectPropPixelDepth, 0, &depth);
    gProp->propGetString(im->props, kOfxImageEffectPropComponents, 0, &components);
    im->data = data;
    if (!data || !depth || !components)
        return kOfxStatErrImageFormat;
    if (strcmp(components, kOfxImageComponentRGBA) != 0)
        return kOfxStatErrImageFormat;
    if (strcmp(depth, kOfxBitDepthFloat) == 0)
        im->bytesPerChannel = 4;
    else if (strcmp(depth, kOfxBitDepthShort) == 0)
        im->bytesPerChannel = 2;
    else if (strcmp(depth, kOfxBitDepthByte) == 0)
        im->bytesPerChannel = 1;
    else
        return kOfxStatErrImageFormat;
    return kOfxStatOK;
}

/* ---- PAM I/O ------------------------------------------------------------------------- */

/* Next header token, skipping white space and '#' comments. */
static int pam_token(FILE *fh, char *tok, size_t size)
{
    int ch;
    size_t n = 0;
    do {
        ch = fgetc(fh);
        if (ch == '#')
            while (ch != EOF && ch != '\n')
                ch = fgetc(fh);
    } while (ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n');
    while (ch != EOF && ch != ' ' && ch != '\t' && ch != '\r' && ch != '\n') {
        if (n + 1 >= size)
            return 0;
        tok[n++] = (char)ch;
        ch = fgetc(fh);
    }
    tok[n] = '\0';
    return n > 0;
}

/* Read a 16-bit (or 8-bit) RGB_ALPHA PAM. Returns 0 for a missing, malformed or
   truncated file; the caller then passes the source through. */
static int read_pam(const char *path, Pam *pam)
{
    FILE *fh = NULL;
    unsigned char *raw = NULL;
    char tok[64];
    long width = 0, height = 0, depth = 0, maxval = 0;
    size_t count, bytes, i;
    int sampleBytes, ok = 0;

    fh = fopen(path, "rb");
    if (!fh)
        goto cleanup;
    if (!pam_token(fh, tok, sizeof tok) || strcmp(tok, "P7") != 0)
        goto cleanup;
    for (;;) {
        if (!pam_token(fh, tok, sizeof tok))
            goto cleanup;
        if (strcmp(tok, "ENDHDR") == 0)
            break;
        if (strcmp(tok, "TUPLTYPE") == 0) {
            if (!pam_token(fh, tok, sizeof tok) || strcmp(tok, "RGB_ALPHA") != 0)
                goto cleanup;
            continue;
        }
        {
            long *slot = !strcmp(tok, "WIDTH")    ? &width
                         : !strcmp(tok, "HEIGHT") ? &height
                         : !strcmp(tok, "DEPTH")  ? &depth
                         : !strcmp(tok, "MAXVAL") ? &maxval
                                                  : NULL;
            char *end = NULL;
            if (!slot || !pam_token(fh, tok, sizeof tok))
                goto cleanup;
            *slot = strtol(tok, &end, 10);
            if (!end || *end)
                goto cleanup;
        }
    }
    /* ENDHDR is followed by exactly one newline, already consumed by pam_token. */
    if (width <= 0 || height <= 0 || width > 65536 || height > 65536 || depth != 4)
        goto cleanup;
    if (maxval != 65535 && maxval != 255)
        goto cleanup;
    sampleBytes = maxval == 65535 ? 2 : 1;
    count = (size_t)width * (size_t)height * 4u;
    bytes = count * (size_t)sampleBytes;
    raw = malloc(bytes);
    pam->px = malloc(count * sizeof(uint16_t));
    if (!raw || !pam->px)
        goto cleanup;
    if (fread(raw, 1, bytes, fh) != bytes)
        goto cleanup; /* truncated: pass through */
    for (i = 0; i < count; i++)
        pam->px[i] = sampleBytes == 2 ? (uint16_t)((raw[2 * i] << 8) | raw[2 * i + 1])
                                      : (uint16_t)(raw[i] * 257u);
    pam->width = (int)width;
    pam->height = (int)height;
    ok = 1;
cleanup:
    free(raw);
    if (fh)
        fclose(fh);
    if (!ok) {
        free(pam->px);
        pam->px = NULL;
    }
    return ok;
}

/* Write the whole source image as a 16-bit PAM, atomically (temporary file in the
   same folder, then rename), so the engine never reads a half-written frame. */
static OfxStatus write_pam(OfxImageEffectHandle fx, const Image *src, const char *path)
{
    OfxStatus st = kOfxStatFailed;
    FILE *fh = NULL;
    unsigned char *row = NULL;
    char tmp[PATH_BUF + 64];
    int width = src->bounds.x2 - src->bounds.x1;
    int height = src->bounds.y2 - src->bounds.y1;
    int x, y, c, committed = 0, err = 0;

    /* unique per call: renders of the same frame may run at once (see the top) */
    if (snprintf(tmp, sizeof tmp, "%s.%ld.%lu.tmp", path, (long)fs_getpid(),
                 (unsigned long)atomic_fetch_add(&gTempCounter, 1)) >= (int)sizeof tmp)
        goto cleanup;
    row = malloc((size_t)width * 8u);
    fh = fopen(tmp, "wb");
    if (!row || !fh)
        goto cleanup;
    if (fprintf(fh, "P7\nWIDTH %d\nHEIGHT %d\nDEPTH 4\nMAXVAL 65535\n"
                    "TUPLTYPE RGB_ALPHA\nENDHDR\n", width, height) < 0)
        goto cleanup;
    /* OpenFX rows go bottom-up from bounds.y1; PAM rows top-down. */
    for (y = src->bounds.y2 - 1; y >= src->bounds.y1; y--) {
        if (gEffect->abort(fx)) {
            st = kOfxStatOK; /* aborted: keep no partial file */
            goto cleanup;
        }
        for (x = src->bounds.x1; x < src->bounds.x2; x++)
            for (c = 0; c < 4; c++) {
                uint16_t v = sample16(src, x, y, c);
                size_t at = ((size_t)(x - src->bounds.x1) * 4u + (size_t)c) * 2u;
                row[at] = (unsigned char)(v >> 8);
                row[at + 1] = (unsigned char)(v & 0xff);
            }
        if (fwrite(row, 1, (size_t)width * 8u, fh) != (size_t)width * 8u)
            goto cleanup;
    }
    if (fclose(fh) != 0) {
        fh = NULL;
        goto cleanup;
    }
    fh = NULL;
#if defined(_WIN32)
    /* rename() does not replace on Windows, and remove-then-rename would race with
       another render of the same frame: replace in one call */
    if (!MoveFileExA(tmp, path, MOVEFILE_REPLACE_EXISTING))
        goto cleanup;
#else
    if (rename(tmp, path) != 0)
        goto cleanup;
#endif
    committed = 1;
    st = kOfxStatOK;
cleanup:
    err = errno; /* before fclose/remove change it */
    if (fh)
        fclose(fh);
    if (!committed)
        remove(tmp);
    free(row);
    if (st != kOfxStatOK) {
        char text[PATH_BUF + 256], reason[128];
        snprintf(text, sizeof text, "FaceStitch: cannot write %s (%s)", path,
                 error_text(err, reason, sizeof reason));
        post_message(fx, kOfxMessageError, text);
    }
    return st;
}

/* ---- parameters ----------------------------------------------------------------------- */

static OfxStatus read_settings(OfxImageEffectHandle fx, OfxTime time, Settings *s)
{
    OfxParamSetHandle params = NULL;
    OfxParamHandle h = NULL;
    char *text = NULL;

    memset(s, 0, sizeof *s);
    s->opacity = 1.0;
    if (gEffect->getParamSet(fx, &params) != kOfxStatOK)
        return kOfxStatErrBadHandle;
#define PARAM(name) (gParam->paramGetHandle(params, (name), &h, NULL) == kOfxStatOK)
    if (PARAM(P_MODE))
        gParam->paramGetValueAtTime(h, time, &s->mode);
    if (PARAM(P_FRAME_OFFSET))
        gParam->paramGetValueAtTime(h, time, &s->frameOffset);
    if (PARAM(P_OPACITY))
        gParam->paramGetValueAtTime(h, time, &s->opacity);
    if (PARAM(P_EXPORT_FOLDER) && gParam->paramGetValueAtTime(h, time, &text) == kOfxStatOK)
        copy_string(s->exportFolder, sizeof s->exportFolder, text);
    text = NULL;
    if (PARAM(P_RESULTS_FOLDER) && gParam->paramGetValueAtTime(h, time, &text) == kOfxStatOK)
        copy_string(s->resultsFolder, sizeof s->resultsFolder, text);
    text = NULL;
    if (PARAM(P_RESULT_NAME) && gParam->paramGetValueAtTime(h, time, &text) == kOfxStatOK)
        copy_string(s->resultName, sizeof s->resultName, text);
#undef PARAM
    s->opacity = clamp01(s->opacity);
    return kOfxStatOK;
}

/* ---- the pixel loop -------------------------------------------------------------------- */

/* Composite `res` (may be NULL: pass through) over `src` into `dst` inside `win`. */
static void process(OfxImageEffectHandle fx, const Image *src, Image *dst,
                    const OfxRectI *win, const Pam *res, double opacity)
{
    int sw = src->bounds.x2 - src->bounds.x1, sh = src->bounds.y2 - src->bounds.y1;
    int x, y, c;
    for (y = win->y1; y < win->y2; y++) {
        /* result row for this output row: nearest sample, top-down; identity when the
           result has the source's size */
        int ry = res ? (int)((src->bounds.y2 - 1 - y + 0.5) * res->height / sh) : 0;
        if (gEffect->abort(fx))
            return;
        for (x = win->x1; x < win->x2; x++) {
            int inside = x >= src->bounds.x1 && x < src->bounds.x2 &&
                         y >= src->bounds.y1 && y < src->bounds.y2;
            const uint16_t *r;
            double s[4], o[4], a;
            if (!inside) {
                const double zero[4] = {0, 0, 0, 0};
                store_px(dst, x, y, zero);
                continue;
            }
            if (!res || (src->bytesPerChannel == dst->bytesPerChannel && opacity <= 0.0)) {
                if (src->bytesPerChannel == dst->bytesPerChannel) {
                    copy_px(src, dst, x, y);
                } else {
                    load_px(src, x, y, s);
                    store_px(dst, x, y, s);
                }
                continue;
            }
            r = res->px + ((size_t)ry * (size_t)res->width +
                           (size_t)((x - src->bounds.x1 + 0.5) * res->width / sw)) * 4u;
            load_px(src, x, y, s);
            a = r[3] / 65535.0 * opacity;
            for (c = 0; c < 3; c++)
                o[c] = r[c] / 65535.0 * a + s[c] * (1.0 - a);
            o[3] = a + s[3] * (1.0 - a);
            store_px(dst, x, y, o);
        }
    }
}

/* ---- actions ----------------------------------------------------------------------------- */

static OfxStatus on_load(void)
{
    if (!gHost || !gHost->fetchSuite)
        return kOfxStatErrMissingHostFeature;
    gProp = gHost->fetchSuite(gHost->host, kOfxPropertySuite, 1);
    gEffect = gHost->fetchSuite(gHost->host, kOfxImageEffectSuite, 1);
    gParam = gHost->fetchSuite(gHost->host, kOfxParameterSuite, 1);
    gMessage2 = gHost->fetchSuite(gHost->host, kOfxMessageSuite, 2);
    /* V2 begins with V1's one member, so it serves as V1 too */
    gMessage = gMessage2 ? (const OfxMessageSuiteV1 *)(const void *)gMessage2
                         : gHost->fetchSuite(gHost->host, kOfxMessageSuite, 1);
    if (!gProp || !gEffect || !gParam)
        return kOfxStatErrMissingHostFeature;
    return kOfxStatOK;
}

static OfxStatus on_unload(void)
{
    gProp = NULL;
    gEffect = NULL;
    gParam = NULL;
    gMessage = NULL;
    gMessage2 = NULL;
    return kOfxStatOK;
}

static OfxStatus on_describe(OfxImageEffectHandle fx)
{
    OfxPropertySetHandle props = NULL;
    if (gEffect->getPropertySet(fx, &props) != kOfxStatOK)
        return kOfxStatErrBadHandle;
    gProp->propSetString(props, kOfxPropLabel, 0, "FaceStitch");
    gProp->propSetString(props, kOfxImageEffectPluginPropGrouping, 0, "FaceStitch");
    gProp->propSetString(props, kOfxImageEffectPropSupportedContexts, 0,
                         kOfxImageEffectContextFilter);
    gProp->propSetString(props, kOfxImageEffectPropSupportedContexts, 1,
                         kOfxImageEffectContextGeneral);
    gProp->propSetString(props, kOfxImageEffectPropSupportedPixelDepths, 0, kOfxBitDepthFloat);
    gProp->propSetString(props, kOfxImageEffectPropSupportedPixelDepths, 1, kOfxBitDepthShort);
    gProp->propSetString(props, kOfxImageEffectPropSupportedPixelDepths, 2, kOfxBitDepthByte);
    gProp->propSetInt(props, kOfxImageEffectPropSupportsTiles, 0, 0);
    gProp->propSetInt(props, kOfxImageEffectPropSupportsMultiResolution, 0, 0);
    gProp->propSetInt(props, kOfxImageEffectPropTemporalClipAccess, 0, 0);
    /* We thread nothing ourselves (0 would promise we do); the host may split a
       frame into windows. Render keeps no state: fully safe (see the top). */
    gProp->propSetInt(props, kOfxImageEffectPluginPropHostFrameThreading, 0, 1);
    gProp->propSetString(props, kOfxImageEffectPluginRenderThreadSafety, 0,
                         kOfxImageEffectRenderFullySafe);
    return kOfxStatOK;
}

static OfxStatus define_string(OfxParamSetHandle params, const char *name, const char *label,
                               const char *mode, const char *def, const char *hint)
{
    OfxPropertySetHandle p = NULL;
    if (gParam->paramDefine(params, kOfxParamTypeString, name, &p) != kOfxStatOK)
        return kOfxStatFailed;
    gProp->propSetString(p, kOfxPropLabel, 0, label);
    gProp->propSetString(p, kOfxParamPropStringMode, 0, mode);
    gProp->propSetString(p, kOfxParamPropDefault, 0, def);
    gProp->propSetString(p, kOfxParamPropHint, 0, hint);
    gProp->propSetInt(p, kOfxParamPropAnimates, 0, 0);
    return kOfxStatOK;
}

static OfxStatus on_describe_in_context(OfxImageEffectHandle fx)
{
    OfxPropertySetHandle p = NULL;
    OfxParamSetHandle params = NULL;

    if (gEffect->clipDefine(fx, kOfxImageEffectSimpleSourceClipName, &p) != kOfxStatOK)
        return kOfxStatFailed;
    gProp->propSetString(p, kOfxImageEffectPropSupportedComponents, 0, kOfxImageComponentRGBA);
    if (gEffect->clipDefine(fx, kOfxImageEffectOutputClipName, &p) != kOfxStatOK)
        return kOfxStatFailed;
    gProp->propSetString(p, kOfxImageEffectPropSupportedComponents, 0, kOfxImageComponentRGBA);

    if (gEffect->getParamSet(fx, &params) != kOfxStatOK)
        return kOfxStatErrBadHandle;
    if (gParam->paramDefine(params, kOfxParamTypeChoice, P_MODE, &p) != kOfxStatOK)
        return kOfxStatFailed;
    gProp->propSetString(p, kOfxPropLabel, 0, "Mode");
    gProp->propSetString(p, kOfxParamPropChoiceOption, 0, "Export");
    gProp->propSetString(p, kOfxParamPropChoiceOption, 1, "Composite");
    gProp->propSetInt(p, kOfxParamPropDefault, 0, MODE_COMPOSITE);
    gProp->propSetInt(p, kOfxParamPropAnimates, 0, 0);
    gProp->propSetString(p, kOfxParamPropHint, 0,
                         "Export: write source frames for a job. "
                         "Composite: lay the engine's result over the source.");

    if (define_string(params, P_EXPORT_FOLDER, "Export folder", kOfxParamStringIsDirectoryPath,
                      "", "Job input folder; frames are written as frame.NNNNNNN.pam") ||
        define_string(params, P_RESULTS_FOLDER, "Results folder",
                      kOfxParamStringIsDirectoryPath, "",
                      "The job's output folder in the exchange") ||
        define_string(params, P_RESULT_NAME, "Result name", kOfxParamStringIsSingleLine,
                      "facestitch", "File prefix of the results (Job output name)"))
        return kOfxStatFailed;

    if (gParam->paramDefine(params, kOfxParamTypeInteger, P_FRAME_OFFSET, &p) != kOfxStatOK)
        return kOfxStatFailed;
    gProp->propSetString(p, kOfxPropLabel, 0, "Frame offset");
    gProp->propSetInt(p, kOfxParamPropDefault, 0, 0);
    gProp->propSetInt(p, kOfxParamPropAnimates, 0, 0);
    gProp->propSetString(p, kOfxParamPropHint, 0,
                         "Added to the host time to get the file number");

    if (gParam->paramDefine(params, kOfxParamTypeDouble, P_OPACITY, &p) != kOfxStatOK)
        return kOfxStatFailed;
    gProp->propSetString(p, kOfxPropLabel, 0, "Opacity");
    gProp->propSetDouble(p, kOfxParamPropDefault, 0, 1.0);
    gProp->propSetDouble(p, kOfxParamPropMin, 0, 0.0);
    gProp->propSetDouble(p, kOfxParamPropMax, 0, 1.0);
    gProp->propSetDouble(p, kOfxParamPropDisplayMin, 0, 0.0);
    gProp->propSetDouble(p, kOfxParamPropDisplayMax, 0, 1.0);
    return kOfxStatOK;
}

/* The render arguments. The optional ones keep their defaults where a host does not
   set them: they are read into locals first, as a failed get promises nothing about
   what it wrote. */
static void read_render_args(OfxPropertySetHandle inArgs, RenderArgs *a)
{
    double scale[2] = {1.0, 1.0};
    int flag = 0;

    memset(a, 0, sizeof *a);
    a->scale[0] = a->scale[1] = 1.0;
    gProp->propGetDouble(inArgs, kOfxPropTime, 0, &a->time);
    gProp->propGetIntN(inArgs, kOfxImageEffectPropRenderWindow, 4, &a->window.x1);
    if (gProp->propGetDoubleN(inArgs, kOfxImageEffectPropRenderScale, 2, scale) ==
        kOfxStatOK) {
        a->scale[0] = scale[0];
        a->scale[1] = scale[1];
    }
    if (gProp->propGetInt(inArgs, kOfxImageEffectPropRenderQualityDraft, 0, &flag) ==
        kOfxStatOK)
        a->draft = flag != 0;
    flag = 0;
    if (gProp->propGetInt(inArgs, kOfxImageEffectPropInteractiveRenderStatus, 0, &flag) ==
        kOfxStatOK)
        a->interactive = flag != 0;
}

static int full_scale(const RenderArgs *a)
{
    return fabs(a->scale[0] - 1.0) < 1e-9 && fabs(a->scale[1] - 1.0) < 1e-9;
}

/* Export mode after the picture has passed through: write the frame, or say why
   not. Preview renders write nothing and say nothing; a proxy render is refused. */
static OfxStatus export_frame(OfxImageEffectHandle fx, const RenderArgs *a,
                              const Settings *s, const Image *src, long number)
{
    char path[PATH_BUF], text[512];
    OfxStatus st;

    if (a->draft || a->interactive)
        return kOfxStatOK; /* scrubbing or tweaking: the final render exports */
    if (!full_scale(a)) {
        snprintf(text, sizeof text,
                 "FaceStitch Export: frame %ld was rendered at %g x %g scale (a proxy "
                 "or reduced resolution) and was not written. Set the host to full "
                 "resolution and render the shot again.",
                 number, a->scale[0], a->scale[1]);
        post_persistent(fx, kOfxMessageError, text);
        return kOfxStatFailed;
    }
    if (!build_path(path, sizeof path, s->exportFolder, "frame", number)) {
        post_message(fx, kOfxMessageError,
                     "FaceStitch: set the Export folder (or the frame number is "
                     "negative: adjust Frame offset)");
        return kOfxStatFailed;
    }
    st = write_pam(fx, src, path);
    if (st == kOfxStatOK)
        clear_persistent(fx);
    return st;
}

static OfxStatus on_render(OfxImageEffectHandle fx, OfxPropertySetHandle inArgs)
{
    OfxStatus st = kOfxStatOK;
    Image src = {0}, dst = {0};
    Pam res = {0, 0, NULL};
    Settings s;
    RenderArgs a;
    char path[PATH_BUF];
    long number;

    read_render_args(inArgs, &a);
    if ((st = read_settings(fx, a.time, &s)) != kOfxStatOK)
        goto cleanup;
    if ((st = fetch_image(fx, kOfxImageEffectSimpleSourceClipName, a.time, &src)) !=
        kOfxStatOK)
        goto cleanup;
    if ((st = fetch_image(fx, kOfxImageEffectOutputClipName, a.time, &dst)) != kOfxStatOK)
        goto cleanup;
    number = frame_number(a.time, s.frameOffset);

    /* Composite at any render scale: the result is sampled to the source's size */
    if (s.mode == MODE_COMPOSITE && valid_name(s.resultName) &&
        build_path(path, sizeof path, s.resultsFolder, s.resultName, number))
        read_pam(path, &res); /* failure leaves res.px NULL: pass through */
    process(fx, &src, &dst, &a.window, res.px ? &res : NULL, s.opacity);

    if (s.mode == MODE_EXPORT && !gEffect->abort(fx))
        st = export_frame(fx, &a, &s, &src, number);
cleanup:
    free(res.px);
    if (src.props)
        gEffect->clipReleaseImage(src.props);
    if (dst.props)
        gEffect->clipReleaseImage(dst.props);
    return st;
}

/* ---- entry points ------------------------------------------------------------------------- */

static OfxStatus main_entry(const char *action, const void *handle,
                            OfxPropertySetHandle inArgs, OfxPropertySetHandle outArgs)
{
    OfxImageEffectHandle fx = (OfxImageEffectHandle)handle;
    (void)outArgs;
    if (!strcmp(action, kOfxActionLoad))
        return on_load();
    if (!gProp || !gEffect || !gParam)
        return kOfxStatErrFatal; /* any other action before a successful Load */
    if (!strcmp(action, kOfxActionUnload))
        return on_unload();
    if (!strcmp(action, kOfxActionDescribe))
        return on_describe(fx);
    if (!strcmp(action, kOfxImageEffectActionDescribeInContext))
        return on_describe_in_context(fx);
    if (!strcmp(action, kOfxActionCreateInstance) || !strcmp(action, kOfxActionDestroyInstance))
        return kOfxStatOK; /* no per-instance state: parameters are read per render */
    if (!strcmp(action, kOfxImageEffectActionRender))
        return on_render(fx, inArgs);
    return kOfxStatReplyDefault;
}

static void set_host(OfxHost *host)
{
    gHost = host; /* store only; suites are fetched in Load */
}

static OfxPlugin gPlugin = {
    kOfxImageEffectPluginApi, kOfxImageEffectPluginApiVersion, PLUGIN_ID,
    PLUGIN_VERSION_MAJOR,     PLUGIN_VERSION_MINOR,            set_host,
    main_entry,
};

OFX_EXPORT OfxStatus OfxSetHost(const OfxHost *host)
{
    gHost = (OfxHost *)host;
    return kOfxStatOK;
}

OFX_EXPORT int OfxGetNumberOfPlugins(void)
{
    return 1;
}

OFX_EXPORT OfxPlugin *OfxGetPlugin(int nth)
{
    return nth == 0 ? &gPlugin : NULL;
}
