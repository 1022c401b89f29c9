"""Finding a head's files in a local folder or on the Hugging Face Hub (cache and offline mode included)."""

from __future__ import annotations

import os

from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError


def resolve_file(
    name_or_path: str | os.PathLike,
    filename: str,
    *,
    subfolder: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
) -> str:
    """Returns the local path of `filename`, looking in a local folder first, then on the Hub.

    Offline mode (``HF_HUB_OFFLINE=1`` or ``local_files_only=True``) resolves against the HF cache only, as
    `huggingface_hub.hf_hub_download` does.
    """
    name_or_path = os.fspath(name_or_path)
    local_dir = os.path.join(name_or_path, subfolder) if subfolder else name_or_path
    if os.path.isdir(local_dir):
        path = os.path.join(local_dir, filename)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{filename!r} not found in the local folder {local_dir!r}. A FastRM head folder holds "
                "`fastrm_config.json` and `fastrm_head.safetensors`, as written by `FastRMHead.save_pretrained`."
            )
        return path
    if os.path.sep in name_or_path and not os.path.exists(name_or_path) and name_or_path.count("/") > 1:
        raise FileNotFoundError(f"No local folder {name_or_path!r}, and it is not a Hub repo id (owner/name).")
    try:
        return hf_hub_download(
            repo_id=name_or_path,
            filename=filename,
            subfolder=subfolder or None,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            local_files_only=local_files_only,
            force_download=force_download,
        )
    except LocalEntryNotFoundError as error:
        raise FileNotFoundError(
            f"Cannot find {filename!r} for {name_or_path!r} in the local cache, and downloading is disabled or "
            "impossible (HF_HUB_OFFLINE=1, `local_files_only=True`, or no connection). Download it once while online "
            "or pass a local folder."
        ) from error
    except (RepositoryNotFoundError, EntryNotFoundError) as error:
        raise FileNotFoundError(
            f"{name_or_path!r} is neither a local folder nor a Hub repo holding {filename!r} "
            f"(revision={revision!r}, subfolder={subfolder!r})."
        ) from error
