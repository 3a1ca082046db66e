"""The data layer: ingest, the SQL model runner, readers, and the feature store for your own code.

Public: `FeatureTables` (tables as Polars DataFrames, samples as torch datasets) and `collate`.
"""

from rechub_store.data.tables import FeatureTables, SampleDataset, SampleStream, collate

__all__ = ["FeatureTables", "SampleDataset", "SampleStream", "collate"]
