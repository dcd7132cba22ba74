"""Training stages: face (stage 1 here; the paper's "Optimizing Facial Mesh"), hair, joint."""
