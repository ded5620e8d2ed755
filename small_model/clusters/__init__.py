"""Anomaly categories without labels: deep features, Birch clustering and a dual-input multi-class model.

The four stages (issue 6), one module each::

    1. sequence model trained on normal sequences only -> a detector artifact (DeepLog or MoE-BERT)
    2. deep features of each sequence        -> features.DeepFeaturizer (fitted on a normal reference;
                                                DeepLog's edit gains in edits)
    3. Birch clustering (k by silhouette)     -> birch: pseudo-labels; the largest cluster is "normal"
                                                 unless the input holds anomalies only
    4. dual-input classifier on the labels    -> classifier; model.ClusterModel saves all as one folder

    from small_model.clusters.config import ClusterConfig
    from small_model.clusters.model import ClusterModel

    model = ClusterModel.fit(detector, records, normal=normal_records, config=ClusterConfig())
    model.save_pretrained("artifacts/clusters")
    ClusterModel.from_pretrained("artifacts/clusters").predict([["line", "line"]])  # [(cluster_id, description)]

Beside them: config (the dataclasses), inputs (what an input mode clusters), describe (each
cluster's templates, samples and description), matching (Hungarian accuracy, NMI, ARI), analysis
(the per-cluster report and its 2-D plot) and cli (``logtriage cluster``, ``logtriage analyze-clusters``).
"""
