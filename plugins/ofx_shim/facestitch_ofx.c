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
 * Structure follows the OpenFX examples (the house rule of one exit path in C): one entry point
 * dispatching each action to one small static function, suites fetched and checked in
 * Load, abort() polled once per row, and one cleanup path in Render that releases
 * every image it fetched. Render never blocks on the engine: it only reads and
 * writes small files.
 */
#include "ofx_min.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(_WIN32)
#include <process.h>
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
static const OfxMessageSuiteV1 *gMessage = NULL; /* optional */

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
    int x, y, c, committed = 0;

    if (snprintf(tmp, sizeof tmp, "%s.%ld.tmp", path, (long)fs_getpid()) >= (int)sizeof tmp)
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
    remove(path); /* rename() does not replace on Windows */
#endif
    if (rename(tmp, path) != 0)
        goto cleanup;
    committed = 1;
    st = kOfxStatOK;
cleanup:
    if (fh)
        fclose(fh);
    if (!committed)
        remove(tmp);
    free(row);
    if (st != kOfxStatOK) {
        char text[PATH_BUF + 256];
        snprintf(text, sizeof text, "FaceStitch: cannot write %s (%s)", path,
                 strerror(errno));
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
    gMessage = gHost->fetchSuite(gHost->host, kOfxMessageSuite, 1);
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
    gProp->propSetInt(props, kOfxImageEffectPluginPropHostFrameThreading, 0, 0);
    /* Export writes one file per frame; two renders of one instance at once could
       race on the same temporary name. */
    gProp->propSetString(props, kOfxImageEffectPluginRenderThreadSafety, 0,
                         kOfxImageEffectRenderInstanceSafe);
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

static OfxStatus on_render(OfxImageEffectHandle fx, OfxPropertySetHandle inArgs)
{
    OfxStatus st = kOfxStatOK;
    Image src = {0}, dst = {0};
    Pam res = {0, 0, NULL};
    Settings s;
    OfxTime time = 0.0;
    OfxRectI win = {0, 0, 0, 0};
    char path[PATH_BUF];
    long number;

    gProp->propGetDouble(inArgs, kOfxPropTime, 0, &time);
    gProp->propGetIntN(inArgs, kOfxImageEffectPropRenderWindow, 4, &win.x1);
    if ((st = read_settings(fx, time, &s)) != kOfxStatOK)
        goto cleanup;
    if ((st = fetch_image(fx, kOfxImageEffectSimpleSourceClipName, time, &src)) != kOfxStatOK)
        goto cleanup;
    if ((st = fetch_image(fx, kOfxImageEffectOutputClipName, time, &dst)) != kOfxStatOK)
        goto cleanup;
    number = frame_number(time, s.frameOffset);

    if (s.mode == MODE_COMPOSITE && valid_name(s.resultName) &&
        build_path(path, sizeof path, s.resultsFolder, s.resultName, number))
        read_pam(path, &res); /* failure leaves res.px NULL: pass through */
    process(fx, &src, &dst, &win, res.px ? &res : NULL, s.opacity);

    if (s.mode == MODE_EXPORT && !gEffect->abort(fx)) {
        if (!build_path(path, sizeof path, s.exportFolder, "frame", number)) {
            post_message(fx, kOfxMessageError,
                         "FaceStitch: set the Export folder (or the frame number is "
                         "negative: adjust Frame offset)");
            st = kOfxStatFailed;
            goto cleanup;
        }
        st = write_pam(fx, &src, path);
    }
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
