"""The facegallery web app: identify faces in a photo, enroll people, forget them, compare embedders, and search a
photo library by face (scan a folder, name clusters of unknown faces, see a person's photos).

Start it with ``facegallery app [--gallery DIR] [--port N] [--host 127.0.0.1]`` (or ``streamlit run`` on this file
with ``FACEGALLERY_HOME`` set). Layout only: every answer comes from the ``gallery`` library, and
``app.support`` / ``app.reports`` / ``app.library`` prepare what the page shows.
"""
from __future__ import annotations

import os

import streamlit as st

from app import library as app_library
from app import reports as app_reports
from app import support as app_support
from gallery.calibration.thresholds import identify_thresholds
from gallery.config import DEFAULT_AUGMENT
from gallery.enroll.enroll import enroll_images
from gallery.errors import USER_ERRORS
from gallery.manage.access import AppAccess, token_ok
from gallery.manage.models import stored_weights
from gallery.manage.people import forget, list_people
from gallery.store import Gallery

PAGES = ("Identify", "Enroll", "People", "Library", "Person")
ACCESS = AppAccess.from_env(os.environ)
SOURCE_WORDS = {"default": "built-in default", "calibrated": "calibrated default", "option": "set by option",
                "gallery size": "follows the gallery's size"}


@st.cache_resource(show_spinner="Opening the gallery...")
def open_gallery(settings_json: str) -> Gallery:
    """One Gallery per settings, shared by every browser session of this server."""
    return Gallery(app_support.settings_from_env({app_support.APP_SETTINGS_ENV: settings_json}))


# -- sidebar ------------------------------------------------------------------------------------------------
def sidebar(gallery: Gallery, summary: app_support.GallerySummary) -> None:
    bar = st.sidebar
    bar.subheader("Gallery")
    bar.caption(summary.home)
    bar.markdown(f"**{summary.people}** people, **{summary.photos}** photos")
    if summary.embeddings:
        bar.table([{"embedder": m, "embeddings": n} for m, n in summary.embeddings.items()], hide_index=True)
    bar.markdown("**Weights**")
    for w in summary.weights:
        where = "in this gallery" if w.in_gallery else "not in this gallery"
        line = f"{w.model}: {w.status} ({w.source}; {where})"
        if w.status == "random weights":
            bar.warning(line)
        else:
            bar.caption(line)
    bench = app_reports.benchmark_view(gallery.settings.home)
    with bar.expander("Latest benchmark", expanded=bench is not None):
        if bench is None:
            st.caption("no benchmark report yet: facegallery benchmark --report DIR, then facegallery app --report DIR")
            return
        st.caption(bench.path)
        for title, rows in bench.tables.items():
            st.markdown(f"**{title}**")
            st.table(rows, hide_index=True)
        for name, png in bench.roc_pngs.items():
            st.image(png, caption=name)


# -- identify -----------------------------------------------------------------------------------------------
def threshold_sliders(gallery: Gallery, models: list[str]) -> dict[str, float]:
    home = gallery.settings.home
    defaults = {m: (c.value, c.source) for m, c in identify_thresholds(gallery, models).items()}
    calibrations = app_reports.load_calibrations(home, app_reports.latest_report(home),
                                                 stored_weights(gallery))
    chosen = {}
    for col, m in zip(st.columns(len(models)), models):
        value, source = defaults[m]
        with col:
            chosen[m] = st.slider(
                f"{m} threshold", min_value=min(0.0, value), max_value=max(1.0, value), value=value, step=0.005,
                format="%.3f", key=f"threshold_{m}", help="cosine similarity a face needs to be named",
            )
            st.caption(f"{SOURCE_WORDS.get(source, source)}: {value:.3f}")
            st.caption(calibrations.text(m, chosen[m]))
    return chosen


def show_image(view: app_support.ImageView) -> None:
    if view.annotated is not None:
        # natural size, but small photos at least 400 px wide so the labels stay legible
        st.image(view.annotated, caption=view.result.path, width=min(max(view.annotated.width, 400), 900))
    if view.result.error is not None:
        st.error(view.message)
    elif view.message:
        st.warning(view.message)
    for line in view.lines:
        st.text(line)
    if view.rows:
        st.table(view.rows, hide_index=True)


def identify_page(gallery: Gallery, summary: app_support.GallerySummary) -> None:
    st.header("Who is in this photo?")
    if summary.empty:
        st.info("The gallery is empty: enroll people on the Enroll page first.")
        return
    in_store = list(summary.embeddings)
    models = st.multiselect("Embedders", in_store, default=in_store, key="identify_models")
    if not models:
        st.info("Choose at least one embedder.")
        return
    thresholds = threshold_sliders(gallery, models)
    files = st.file_uploader("Photos (JPG, PNG, WEBP)", type=list(app_support.UPLOAD_TYPES),
                             accept_multiple_files=True, key="identify_files")
    path = ""
    if ACCESS.paths:  # reading files of the server by path is off unless `facegallery app --allow-paths`
        path = st.text_input("...or the path of a photo on this machine", key="identify_path")
    uploads = [(f.name, f.getvalue()) for f in files or []]
    if not uploads and not path.strip():
        st.caption("Upload a photo to see every face boxed and named.")
        return
    with st.spinner("Detecting and identifying faces..."):
        view = app_support.identify_view(gallery, uploads, [path], models=models, thresholds=thresholds)
    if view.random_weights:
        st.warning("Random weights (development only): " + ", ".join(view.random_weights))
    for image in view.images:
        show_image(image)


# -- enroll -------------------------------------------------------------------------------------------------
def _enroll(gallery: Gallery) -> None:
    state = st.session_state
    files = state.get("enroll_files") or []
    if not files:
        state.enroll_outcome = ("error", "choose one or more photos of the person")
        return
    try:
        report = enroll_images(gallery, state.get("enroll_name", ""), [(f.name, f.getvalue()) for f in files],
                               models=state.get("enroll_models") or None, augment=int(state.enroll_augment))
    except USER_ERRORS as exc:
        state.enroll_outcome = ("error", str(exc))
        return
    state.enroll_outcome = ("report", report)


def show_enroll_report(report) -> None:
    who = ", ".join(report.people)
    added = ", ".join(f"{m} +{n}" for m, n in report.embeddings_added.items())
    if report.enrolled:
        st.success(f"Enrolled {len(report.enrolled)} photo(s) of {who} (vectors: {added}).")
    elif not report.unchanged:
        st.error(f"Nothing enrolled for {who}: every photo was skipped.")
    if report.unchanged:
        st.info(f"{report.unchanged} photo(s) were already enrolled and unchanged.")
    if report.skipped:
        st.warning(f"{len(report.skipped)} file(s) skipped:")
        st.table([{"file": s.path.removeprefix("upload:"), "reason": s.reason} for s in report.skipped],
                 hide_index=True)
    for p in report.multi_face:
        st.info(f"{p.path.removeprefix('upload:')}: {p.faces_detected} faces, the largest was enrolled")
    for m, why in report.models_skipped.items():
        st.caption(f"{m} not used: {why}")
    if report.random_weights:
        st.warning("Random weights (development only): " + ", ".join(report.random_weights))


def enroll_page(gallery: Gallery, summary: app_support.GallerySummary) -> None:
    st.header("Enroll a person")
    choices = app_support.usable_models(summary)
    st.text_input("Name", key="enroll_name")
    st.file_uploader("Photos of this person (one face each)", type=list(app_support.UPLOAD_TYPES),
                     accept_multiple_files=True, key="enroll_files")
    default = [m for m in summary.embeddings if m in choices] or choices
    st.multiselect("Embedders", choices, default=default, key="enroll_models")
    st.number_input("Augmented copies per photo", min_value=0, max_value=20, value=DEFAULT_AUGMENT,
                    key="enroll_augment")
    st.button("Enroll", type="primary", on_click=_enroll, args=(gallery,), key="enroll_go")
    outcome = st.session_state.pop("enroll_outcome", None)
    if outcome is not None:
        kind, value = outcome
        if kind == "error":
            st.error(value)
        else:
            show_enroll_report(value)


# -- people -------------------------------------------------------------------------------------------------
def _forget(gallery: Gallery, name: str) -> None:
    state = st.session_state
    state.pop("forget_pending", None)
    try:
        report = forget(gallery, name)
    except USER_ERRORS as exc:
        state.forget_outcome = ("error", str(exc))
        return
    removed = ", ".join(f"{m} {n}" for m, n in report.embeddings_removed.items()) or "none"
    state.forget_outcome = ("success", f"Forgot {report.name}: {report.photos} photo(s), vectors removed: {removed}.")


def _ask_forget(name: str) -> None:
    st.session_state.forget_pending = name


def _cancel_forget() -> None:
    st.session_state.pop("forget_pending", None)


def people_page(gallery: Gallery) -> None:
    st.header("People")
    outcome = st.session_state.pop("forget_outcome", None)
    if outcome is not None:
        kind, message = outcome
        if kind == "error":
            st.error(message)
        else:
            st.success(message)
    people = list_people(gallery)
    if not people:
        st.info("Nobody is enrolled yet.")
        return
    models = sorted({m for p in people for m in p.embeddings})
    st.table([{"name": p.name, "photos": p.photos, "faces": p.faces, **{m: p.embeddings.get(m, 0) for m in models},
               "library": p.library, "suggested": p.suggested} for p in people], hide_index=True)
    name = st.selectbox("Person", [p.name for p in people], key="forget_name")
    pending = st.session_state.get("forget_pending")
    if pending is None:
        st.button(f"Forget {name}...", on_click=_ask_forget, args=(name,), key="forget_ask")
        return
    st.warning(f"Forget {pending}? Their photos, faces, vectors and any heads trained with them are erased. "
               "This cannot be undone.")
    yes, no = st.columns(2)
    yes.button(f"Yes, forget {pending}", type="primary", on_click=_forget, args=(gallery, pending), key="forget_yes")
    no.button("Cancel", on_click=_cancel_forget, key="forget_cancel")


# -- library ------------------------------------------------------------------------------------------------
def _show_outcome(key: str) -> None:
    """Show (once) the ``(kind, line)`` messages a button callback left under ``key``."""
    for kind, line in st.session_state.pop(key, None) or ():
        getattr(st, kind)(line)


def _scan(gallery: Gallery) -> None:
    state = st.session_state
    try:
        models = app_support.usable_models(app_support.summarize(gallery))  # as the Enroll page offers them
        state.library_outcome = app_library.scan_folder(gallery, state.get("library_folder", ""), models=models)
    except USER_ERRORS as exc:
        state.library_outcome = [("error", str(exc))]


def _name_cluster(gallery: Gallery, cluster_id: int) -> None:
    state = st.session_state
    try:
        person, line = app_library.name_cluster(gallery, cluster_id, state.get(f"cluster_name_{cluster_id}", ""))
    except USER_ERRORS as exc:
        state.library_outcome = [("error", str(exc))]
        return
    state.library_outcome = [("success", line)]
    state.person_pick = person  # the Person page opens on them


def _merge(gallery: Gallery) -> None:
    state = st.session_state
    try:
        line = app_library.merge_clusters(gallery, state.get("merge_into"), state.get("merge_other"))
    except USER_ERRORS as exc:
        state.library_outcome = [("error", str(exc))]
        return
    state.library_outcome = [("success", line)]
    for key in ("merge_into", "merge_other"):  # the merged-away cluster is no longer a choice
        state.pop(key, None)


def library_page(gallery: Gallery) -> None:
    st.header("Library")
    if ACCESS.paths:  # scanning reads files of the server by path: off unless `facegallery app --allow-paths`
        folder, go = st.columns([5, 1], vertical_alignment="bottom")
        folder.text_input("Scan a folder on this machine", key="library_folder", placeholder="/home/me/Pictures")
        go.button("Scan", type="primary", on_click=_scan, args=(gallery,), key="library_scan")
    else:
        st.caption("Scan a folder with `facegallery scan DIR` (or start the app with `--allow-paths` to scan from "
                   "here), then reload this page.")
    _show_outcome("library_outcome")  # the scan, naming or merge ran in the button's callback, before this run
    view = app_library.library_view(gallery, page=int(st.session_state.get("library_page", 1)) - 1)
    st.markdown(view.summary)
    if len(view.cluster_ids) >= 2:
        with st.expander("Merge two clusters"):
            keep, other, go = st.columns([2, 2, 1], vertical_alignment="bottom")
            keep.selectbox("Keep cluster", view.cluster_ids, format_func=view.choice, key="merge_into")
            other.selectbox("Merge this one into it", view.cluster_ids, index=1, format_func=view.choice,
                            key="merge_other")
            go.button("Merge", on_click=_merge, args=(gallery,), key="merge_go")
    if view.pages > 1:
        st.number_input(f"Clusters page (of {view.pages})", min_value=1, max_value=view.pages, key="library_page")
    for c in view.clusters:
        with st.container(border=True):
            st.markdown(f"**{c.title}**")
            if c.suggestion:
                st.caption(c.suggestion)
            st.image(c.thumbnails, width=app_library.THUMB_PX)
            name, go = st.columns([5, 1], vertical_alignment="bottom")
            name.text_input(f"Name cluster {c.id}", value=c.suggested or "", key=f"cluster_name_{c.id}",
                            placeholder="Who is this?", label_visibility="collapsed")
            go.button("Name", key=f"cluster_go_{c.id}", on_click=_name_cluster, args=(gallery, c.id))


# -- person -------------------------------------------------------------------------------------------------
def person_page(gallery: Gallery) -> None:
    st.header("A person's library photos")
    names = app_library.people_names(gallery)
    if not names:
        st.info("Nobody is enrolled yet: name a cluster on the Library page, or enroll people on the Enroll page.")
        return
    pick = st.session_state.get("person_pick")
    name = st.selectbox("Person", names, index=names.index(pick) if pick in names else 0, key="person_name")
    with st.spinner("Searching the library..."):
        view = app_library.person_view(gallery, name)
    if view.random_weights:
        st.warning(f"Random weights (development only): {view.model}")
    if not view.photos:
        st.info(view.summary)
        return
    st.markdown(view.summary)
    per_row = 4
    for start in range(0, len(view.photos), per_row):
        for col, photo in zip(st.columns(per_row), view.photos[start:start + per_row]):
            if photo.picture is None:
                col.warning(f"{photo.path}: cannot be read any more")
            else:
                col.image(photo.picture, caption=photo.caption)


# -- access -------------------------------------------------------------------------------------------------
def gate(gallery: Gallery) -> None:
    """Every page starts here: without the access token (``facegallery app`` shows it once), nothing else."""
    if not ACCESS.auth or st.session_state.get("access_ok"):
        return
    st.title("facegallery")
    token = st.text_input("Access token", type="password", key="access_token")
    if token and token_ok(gallery, token):
        st.session_state["access_ok"] = True
        st.rerun()
    if token:
        st.error("Wrong access token.")
    else:
        st.caption("The token was shown when `facegallery app` first started; `facegallery app --new-token` "
                   "makes another.")
    st.stop()


# -- main ---------------------------------------------------------------------------------------------------
def main() -> None:
    st.set_page_config(page_title="facegallery", layout="wide")
    try:
        gallery = open_gallery(app_support.settings_to_env(app_support.settings_from_env()))
    except USER_ERRORS as exc:
        st.error(f"Cannot open the gallery: {exc}")
        st.stop()
    gate(gallery)
    page = st.sidebar.radio("Page", PAGES, key="page")
    # Enroll and forget run in button callbacks, before this script: the summary read here is already fresh.
    try:
        summary = app_support.summarize(gallery)
        sidebar(gallery, summary)
        if page == "Identify":
            identify_page(gallery, summary)
        elif page == "Enroll":
            enroll_page(gallery, summary)
        elif page == "People":
            people_page(gallery)
        elif page == "Library":
            library_page(gallery)
        else:
            person_page(gallery)
    except USER_ERRORS as exc:
        st.error(str(exc))

main()
