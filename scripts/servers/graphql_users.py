"""A GraphQL API as people build one with Strawberry on FastAPI: `user(key: ID!)` answers the
key it was asked for. For scripts/bench-keys's `graphql` scenario, which checks that a keyed POST
body reaches a real GraphQL server's parser with every key exactly as listed.

    uvicorn --app-dir scripts/servers graphql_users:app --port 8000
"""
import strawberry
from fastapi import FastAPI
from strawberry.fastapi import GraphQLRouter


@strawberry.type
class User:
    key: str
    name: str


@strawberry.type
class Query:
    @strawberry.field
    def user(self, key: strawberry.ID) -> User:
        return User(key=key, name=f"user {key}")


app = FastAPI()
app.include_router(GraphQLRouter(strawberry.Schema(query=Query)), prefix="/graphql")
