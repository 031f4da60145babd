"""The maze task: enumerable shortest paths, so the exact tilted target is computable
(METHOD.md section 7).
"""
