"""Uploaded datasets: upload (npz, IDX pair, zip of class folders, CSV), list, inspect."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, status
from fastapi.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request as StarletteRequest

from service import dataset_uploads, datasets_store
from service.api.bodies import read_limited
from service.api.params import Limit, Offset, query_names
from service.dataset_uploads import FORMATS, MAX_SIDE, ParsedDataset, UploadError
from service.db import SessionDep
from service.errors import InvalidRequest, NotFound, UnsupportedMediaType
from service.schemas import DatasetPublic, DatasetsPublic, ErrorResponse

router = APIRouter(prefix="/datasets", tags=["datasets"])
DatasetId = Annotated[str, Path(max_length=32, description="Dataset id (ds_...)")]
NOT_FOUND = {404: {"model": ErrorResponse, "description": "No dataset with that id"}}
UPLOAD_BODY = {
    "requestBody": {
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": ".npz (images, labels[, test_images, test_labels, "
                            "class_names]), a zip of class folders of images, or a CSV "
                            "(features..., target) for regression",
                        },
                        "images": {"type": "string", "format": "binary", "description": "IDX"},
                        "labels": {"type": "string", "format": "binary", "description": "IDX"},
                        "name": {
                            "type": "string",
                            "maxLength": datasets_store.MAX_NAME_CHARS,
                            "description": "a label for display",
                        },
                        "format": {"type": "string", "enum": list(FORMATS)},
                        "image_side": {
                            "type": "integer",
                            "description": "zip only: images are resized to this side (28)",
                        },
                    },
                }
            }
        },
        "required": True,
    }
}


FILE_FIELDS = ("file", "images", "labels")
TEXT_FIELDS = ("name", "format", "image_side")


async def _form_fields(
    request: Request, body: bytes
) -> tuple[dict[str, bytes], dict[str, str], dict[str, str]]:
    """(files by field, text fields, file names by field) from the body already in memory."""

    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    buffered = StarletteRequest(request.scope, replay)
    try:
        # No text-part cap below the body's own: the body is in memory already, within
        # TRAINSERVE_MAX_DATASET_BYTES, and a smaller cap would blame "body" for a long name
        # rather than let the field's own check name it. Up to one file part per field: 'file'
        # sent with 'images' + 'labels', or 'name' sent as a file, is then refused naming the
        # fields, not as a "malformed" body (the parts are in memory already, as the body is).
        form = await buffered.form(
            max_files=len(FILE_FIELDS + TEXT_FIELDS),
            max_fields=8,
            max_part_size=len(body) + 1,
        )
    except StarletteHTTPException as exc:
        reason = f"malformed multipart body ({exc.detail})"
        raise InvalidRequest.for_fields([("body", reason)]) from exc
    try:
        files: dict[str, bytes] = {}
        texts: dict[str, str] = {}
        filenames: dict[str, str] = {}
        for key, value in form.multi_items():
            if key in files or key in texts:
                raise InvalidRequest.for_fields([(key, "given more than once")])
            _check_part_kind(key, isinstance(value, UploadFile))
            if isinstance(value, UploadFile):
                files[key] = await value.read()
                filenames[key] = value.filename or ""
            else:
                texts[key] = value
    finally:
        await form.close()
    unknown = sorted((files.keys() | texts.keys()) - {*FILE_FIELDS, *TEXT_FIELDS})
    if unknown:
        raise InvalidRequest.for_fields([(k, "unknown field") for k in unknown])
    return files, texts, filenames


def _check_part_kind(key: str, is_file: bool) -> None:
    """A known field sent as the other kind of part is refused as such, rather than taken for
    missing or blamed on a rule about other fields ('name' as a file: "only with format 'idx'")."""
    if key in TEXT_FIELDS and is_file:
        raise InvalidRequest.for_fields([(key, "must be a text field, not a file")])
    if key in FILE_FIELDS and not is_file:
        reason = f"must be a file, not a text field (in curl: -F {key}=@path)"
        raise InvalidRequest.for_fields([(key, reason)])


def _check_name(texts: dict[str, str]) -> None:
    """A display name is shown as given (cleaned): refused when too long rather than cut."""
    name = texts.get("name")
    if name is not None and len(name) > datasets_store.MAX_NAME_CHARS:
        reason = f"at most {datasets_store.MAX_NAME_CHARS} characters, got {len(name)}"
        raise InvalidRequest.for_fields([("name", reason)])


def _image_side(text: str) -> int:
    """The form's image_side as a number. ASCII digits only: str.isdigit() also passes '²',
    which int() then refuses with a ValueError (a 500)."""
    if not (text.isascii() and text.isdigit()):
        raise UploadError("image_side", "must be a whole number of pixels")
    digits = text.lstrip("0") or "0"
    # More digits than MAX_SIDE has is out of range (parse_zip_folders says so); int() itself
    # would raise on a string of over 4,300 digits.
    return int(digits) if len(digits) <= len(str(MAX_SIDE)) else MAX_SIDE + 1


def _parse(
    files: dict[str, bytes], texts: dict[str, str], filenames: dict[str, str], max_bytes: int
) -> ParsedDataset:
    fmt = texts.get("format")
    if fmt is not None and fmt not in FORMATS:
        raise UploadError("format", f"must be one of {', '.join(FORMATS)}")
    if fmt == "idx" or (fmt is None and files.keys() & {"images", "labels"}):
        if "file" in files:
            given = " + ".join(f"'{k}'" for k in ("images", "labels") if k in files)
            if not given:  # format idx with one 'file': the format is what does not fit
                raise UploadError(
                    "format",
                    "'idx' is two files, 'images' and 'labels'; a single 'file' is npz, zip "
                    "or csv (leave format out to read it from the file)",
                )
            raise UploadError(
                "file",
                f"'file' and {given} cannot be sent together: send either 'file' or the IDX "
                "pair 'images' + 'labels'",
            )
        for part in ("images", "labels"):
            if part not in files:
                raise UploadError(part, "an IDX upload is two files: 'images' and 'labels'")
        if "image_side" in texts:  # IDX images keep their own size, as an npz's do
            raise UploadError("image_side", "only for a zip of class folders")
        return dataset_uploads.parse_idx_pair(files["images"], files["labels"], max_bytes)
    if "file" not in files:
        raise UploadError(
            "file", "upload the dataset in the field 'file' (or IDX 'images' + 'labels')"
        )
    if files.keys() - {"file"}:
        raise UploadError(sorted(files.keys() - {"file"})[0], "only with format 'idx'")
    raw = files["file"]
    fmt = fmt or dataset_uploads.format_of(filenames.get("file", ""), raw)
    if "image_side" in texts and fmt != "zip":
        raise UploadError("image_side", "only for a zip of class folders")
    if fmt == "npz":
        return dataset_uploads.parse_npz(raw, max_bytes)
    if fmt == "zip":
        side = _image_side(texts.get("image_side", "28"))
        return dataset_uploads.parse_zip_folders(raw, max_bytes, side)
    return dataset_uploads.parse_csv(raw)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetPublic,
    responses={
        413: {"model": ErrorResponse, "description": "Over TRAINSERVE_MAX_DATASET_BYTES"},
        415: {"model": ErrorResponse, "description": "Not multipart/form-data"},
    },
    openapi_extra=UPLOAD_BODY,
    dependencies=[query_names()],
)
async def upload_dataset(request: Request, session: SessionDep) -> DatasetPublic:
    """Upload, validate and store a dataset; train on it with `"dataset": "<id>"`."""
    settings = request.app.state.settings
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "multipart/form-data":
        raise UnsupportedMediaType(
            f"content type {content_type!r} is not accepted; send multipart/form-data with "
            "'file' (npz, zip or csv) or 'images' + 'labels' (IDX)"
        )
    body = await read_limited(request, settings.max_dataset_bytes)
    files, texts, filenames = await _form_fields(request, body)
    _check_name(texts)
    try:
        parsed = await run_in_threadpool(
            _parse, files, texts, filenames, settings.max_dataset_bytes
        )
    except UploadError as exc:
        raise InvalidRequest.for_fields([(exc.field, exc.reason)]) from exc
    row = await run_in_threadpool(
        datasets_store.save_dataset,
        session,
        settings.resolved_artifact_dir,
        parsed,
        texts.get("name"),
    )
    return DatasetPublic.from_row(row)


@router.get("", response_model=DatasetsPublic, dependencies=[query_names("limit", "offset")])
def list_datasets(
    session: SessionDep,
    limit: Limit = 50,
    offset: Offset = 0,
) -> DatasetsPublic:
    """Uploaded datasets, newest first."""
    rows, count = datasets_store.list_datasets(session, limit=limit, offset=offset)
    return DatasetsPublic(data=[DatasetPublic.from_row(r) for r in rows], count=count)


@router.get(
    "/{dataset_id}",
    response_model=DatasetPublic,
    responses=NOT_FOUND,
    dependencies=[query_names()],
)
def get_dataset(dataset_id: DatasetId, session: SessionDep) -> DatasetPublic:
    """One uploaded dataset: kind, sizes, shape, classes."""
    try:
        return DatasetPublic.from_row(datasets_store.get_dataset(session, dataset_id))
    except datasets_store.DatasetNotFound as exc:
        raise NotFound(str(exc)) from exc
