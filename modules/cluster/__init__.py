"""Token clustering inside the CLIP image tower (CenterCLIP, SPEC §3)."""
from .baselines import segment_mean, sparse_sample, temporal_shift, token_shift
from .kmedoids import batch_kmedoids
from .schedule import (ALGORITHMS, ClusterSpec, build_cluster_specs, chunk_size_for, final_frames,
                       video_mask_after_clustering)
from .spectral import batch_spectral, spatial_temporal_graph
from .token_cluster import TokenCluster, build_token_clusters, cluster_means
