"""Influence maths: per-sample gradients, Hessian-vector products, the inverse-HVP solvers and
their planning, influence scores over kNN candidates, net harm on the validation loss, and the
FAISS index. ``api.FastIF`` is the façade over all of it.

    gradients → hessian → solvers / krylov / kfac → planning → scores, net_harm;  knn;  api
"""
