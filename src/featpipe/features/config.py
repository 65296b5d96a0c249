"""`embed:` the options of every embedding run (:func:`featpipe.features.embed.embed_datasets` takes it)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from featpipe.sections import Section

# the choices live here (the light module), and decode / embed check against them
DECODE_CHOICES = ("auto", "cpu", "device", "device-jpeg")
ENGINES = ("local", "ray")
FEATURE_DTYPES = ("float32", "float16")


class EmbedConfig(Section):
    """`embed:` options of every embedding run."""

    feature_dtype: Literal[*FEATURE_DTYPES] = Field("float32", description="Storage type of the cached "
                                                         "features.")
    batch_size: int | None = Field(None, gt=0, description="Batch size (default: 8 on CPU, fastest there; 256 on "
                                   "GPU; in a pipeline a backbone's own wins).")
    workers: int | None = Field(None, ge=0, description="Decoders (default: a thread per core on CPU, decoding "
                                "each batch between forward passes; on GPU a process per core but one, up to 16, "
                                "decoding ahead of it; 0 decodes inline).")
    decode: Literal[*DECODE_CHOICES] = Field(
        "auto", description="Where images are resized: `cpu` (PIL, in the decoders), `device` (decoded by PIL; "
        "images smaller than the model's input resized and cropped on the model's device with PIL's arithmetic: "
        "the same features) or `device-jpeg` (plain JPEGs decoded there too, batched; nvJPEG on CUDA gives "
        "slightly different pixels, so its caches are kept apart). `auto`: `device` on CUDA when the backbone "
        "allows, else `cpu`.")
    engine: Literal[*ENGINES] = Field("local", description="`ray`: decode in Ray tasks and run the backbone "
                                            "in a Ray actor pool (`pip install featpipe[ray]`).")
    address: str | None = Field(None, description="Ray cluster to join with engine `ray` (e.g. `ray://head:10001` "
                                "or `auto`; default: start a local Ray instance).")
    ray_actors: int | None = Field(None, gt=0, description="Backbone actors of the Ray engine (default: one per "
                                   "GPU of the cluster, else one per 8 CPUs).")
    retry_failed: bool = Field(False, description="Retry every failed row (by default only I/O failures and "
                               "changed files are retried).")

    def embed_options(self) -> dict[str, Any]:
        """These fields as :func:`featpipe.features.embed.embed_datasets` keywords."""
        return {"batch_size": self.batch_size, "num_workers": self.workers, "feature_dtype": self.feature_dtype,
                "decode": self.decode, "engine": self.engine, "ray_address": self.address,
                "ray_actors": self.ray_actors, "retry_failed": self.retry_failed}
